//! `orchestrator users …`: the studio's people, on the configured store (SQLite file or PostgreSQL), whether or not
//! a server runs. A password comes from standard input (`--password-stdin`, one line) or is asked for twice at the
//! terminal, never from the command line (where `ps` and the shell's history would show it).

use std::io::IsTerminal;

use crate::config::Config;
use crate::model::Role;
use crate::people;
use crate::store::Store;

/// `orchestrator users …`
#[derive(Debug, clap::Subcommand)]
pub enum UsersAction {
    /// Add a person: the first admin starts accounts (sign-in is then needed off loopback and for everyone).
    Add {
        name: String,
        /// viewer, generator, approver or admin.
        #[arg(long)]
        role: String,
        /// Read the password from standard input (one line) instead of asking for it.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Everyone, with their role and whether they are disabled.
    List,
    /// Change a person's role (their sessions and tokens stop working).
    SetRole { name: String, role: String },
    /// Disable a person: they sign in nowhere, their sessions and tokens stop working.
    Disable { name: String },
    /// Enable a disabled person again.
    Enable { name: String },
    /// Set a new password (their sessions and tokens stop working).
    ResetPassword {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

pub async fn users(config: &Config, action: UsersAction) -> Result<String, String> {
    // Before the server ever ran, the data folder may not exist yet: the SQLite file goes there.
    crate::paths::DataPaths::new(&config.data_dir)
        .ensure()
        .map_err(|e| {
            format!(
                "cannot create the data folder {}: {e}",
                config.data_dir.display()
            )
        })?;
    let store = Store::open(config.database_url.expose())
        .await
        .map_err(|e| format!("cannot open the store: {e}"))?;
    let answer = carry_out(&store, action).await;
    store.close().await;
    answer
}

async fn carry_out(store: &Store, action: UsersAction) -> Result<String, String> {
    let said = |error: people::PeopleError| error.to_string();
    match action {
        UsersAction::Add {
            name,
            role,
            password_stdin,
        } => {
            let role = role_of(&role)?;
            let password = password(password_stdin)?;
            let person = people::add(store, &name, role, &password)
                .await
                .map_err(said)?;
            Ok(format!("added {} ({})", person.name, person.role.as_str()))
        }
        UsersAction::List => {
            let everyone = store.people().await.map_err(|e| e.to_string())?;
            if everyone.is_empty() {
                return Ok(
                    "nobody yet: `orchestrator users add NAME --role admin` starts accounts".into(),
                );
            }
            let lines: Vec<String> = everyone
                .iter()
                .map(|p| {
                    let state = p.disabled_at.as_ref().map_or("", |_| "  disabled");
                    format!("{:<24} {:<9}{state}", p.name, p.role.as_str())
                })
                .collect();
            Ok(lines.join("\n"))
        }
        UsersAction::SetRole { name, role } => {
            let role = role_of(&role)?;
            people::set_role(store, &name, role).await.map_err(said)?;
            Ok(format!("{name} is now {}", role.as_str()))
        }
        UsersAction::Disable { name } => {
            people::set_disabled(store, &name, true)
                .await
                .map_err(said)?;
            Ok(format!("{name} is disabled"))
        }
        UsersAction::Enable { name } => {
            people::set_disabled(store, &name, false)
                .await
                .map_err(said)?;
            Ok(format!("{name} is enabled"))
        }
        UsersAction::ResetPassword {
            name,
            password_stdin,
        } => {
            let password = password(password_stdin)?;
            people::reset_password(store, &name, &password)
                .await
                .map_err(said)?;
            Ok(format!("{name}'s password is changed"))
        }
    }
}

fn role_of(text: &str) -> Result<Role, String> {
    Role::parse(text)
        .ok_or_else(|| format!("--role {text:?}: expected viewer, generator, approver or admin"))
}

/// The password: one line of standard input, or asked for twice at the terminal.
fn password(from_stdin: bool) -> Result<String, String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password: {e}"))?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    if !std::io::stdin().is_terminal() {
        return Err(
            "no terminal to ask for the password: give it on standard input with --password-stdin"
                .into(),
        );
    }
    let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
    let again = rpassword::prompt_password("Once more: ").map_err(|e| e.to_string())?;
    if first != again {
        return Err("the two passwords differ: nothing was changed".into());
    }
    Ok(first)
}
