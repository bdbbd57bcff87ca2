//! Names that someone else chose (a client, ComfyUI's history, a folder listing) turned into paths that stay inside
//! their folder, symbolic links included.
//!
//! Filtering a name lexically is not enough: a link `outputs/<job>/x.png -> /etc/passwd` is a plain name that points
//! outside. [`resolve_within`] resolves every link and `..` (the operating system's own reading of the path) and
//! answers the file only when the result is still under the folder, itself resolved the same way.

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// `root/name` with every link resolved, when it exists and is inside `root` (also resolved); `None` otherwise.
///
/// `name` is relative: one or more plain components (`x.png`, `<job id>/x.png`). A name that is absolute, has a
/// drive or a root (`C:x`, `\x` on Windows), an empty, `.` or `..` component, or a NUL is refused before the
/// filesystem is asked.
pub fn resolve_within(root: &Path, name: &str) -> Option<PathBuf> {
    if !is_plain_relative(name) {
        return None;
    }
    let root = root.canonicalize().ok()?;
    let resolved = root.join(name).canonicalize().ok()?;
    (resolved != root && resolved.starts_with(&root)).then_some(resolved)
}

/// Where a new file `name` goes in `root`: `root/name` when `name` is one plain file name (no separator, no `.` or
/// `..`, no drive). For files about to be written, which do not exist yet; the writer must not follow a link that
/// is already there (write a fresh temporary file and rename it over the name, which replaces a link instead of
/// following it).
pub fn new_file_in(root: &Path, name: &str) -> Option<PathBuf> {
    let mut components = Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(only)), None) if only == name && is_plain_relative(name) => {
            Some(root.join(name))
        }
        _ => None,
    }
}

/// One or more plain components: split at every separator the platform has, each part non-empty, not `.` or
/// `..`, and read by the platform as one plain name (no drive such as `C:` on Windows).
fn is_plain_relative(name: &str) -> bool {
    let separators: &[char] = if cfg!(windows) { &['/', '\\'] } else { &['/'] };
    !name.is_empty()
        && !name.contains('\0')
        && name.split(separators).all(|part| {
            let mut components = Path::new(part).components();
            matches!(
                (components.next(), components.next()),
                (Some(Component::Normal(only)), None) if only == part
            )
        })
}

/// A temporary name beside `target` that no other write uses: this process's id and a counter.
fn temporary_for(target: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Makes a rename in `target`'s folder durable: on Unix the folder itself is synced (Windows cannot open a folder
/// so, and its renames are journaled).
fn sync_folder_of(target: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = target
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = target;
    Ok(())
}

/// Writes `bytes` as `target` atomically: a temporary file beside it (a name of its own, created with
/// `create_new`, so never a leftover or a planted link), fsync, rename, fsync of the folder. A crash at any point
/// leaves the old file or the new one, and concurrent writes each put a whole file in place (the last rename wins).
pub fn write_atomic(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = temporary_for(target);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)?;
    let written = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, target)
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    sync_folder_of(target)
}

/// [`write_atomic`] for a body that arrives in pieces (a download): written to the temporary file as it comes,
/// put in place by [`AtomicFile::commit`]. Dropped uncommitted (an error, a broken download), the temporary
/// file is removed and the target is untouched.
pub struct AtomicFile {
    file: Option<tokio::fs::File>,
    temporary: PathBuf,
    target: PathBuf,
}

impl AtomicFile {
    pub async fn create(target: &Path) -> std::io::Result<Self> {
        let temporary = temporary_for(target);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
            .await?;
        Ok(Self {
            file: Some(file),
            temporary,
            target: target.to_owned(),
        })
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match self.file.as_mut() {
            Some(file) => file.write_all(bytes).await,
            None => Err(std::io::Error::other("the file was committed")),
        }
    }

    /// fsync, rename over the target, fsync of the folder.
    pub async fn commit(mut self) -> std::io::Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("the file was committed"))?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&self.temporary, &self.target).await?;
        let target = self.target.clone();
        tokio::task::spawn_blocking(move || sync_folder_of(&target))
            .await
            .map_err(std::io::Error::other)?
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Names built from the fragments that have escaped folders before, mixed with arbitrary text.
    fn hostile_name() -> impl Strategy<Value = String> {
        let fragment = prop_oneof![
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just("/".to_owned()),
            Just("\\".to_owned()),
            Just("//".to_owned()),
            Just("%2e%2e".to_owned()),
            Just("C:".to_owned()),
            Just("\0".to_owned()),
            Just("x.png".to_owned()),
            Just("inside".to_owned()),
            Just("out".to_owned()),
            Just("link".to_owned()),
            Just("dirlink".to_owned()),
            Just("~".to_owned()),
            "[a-z.]{1,4}",
            any::<String>(),
        ];
        prop::collection::vec(fragment, 0..8).prop_map(|parts| parts.concat())
    }

    /// A root with a file, a sub-folder and a file outside it; on Unix also links that point in and out.
    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("inside")).unwrap();
        std::fs::write(root.join("x.png"), b"image").unwrap();
        std::fs::write(root.join("inside").join("x.png"), b"image").unwrap();
        std::fs::write(dir.path().join("out"), b"secret").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::symlink;
            symlink(dir.path().join("out"), root.join("link")).unwrap();
            symlink(dir.path(), root.join("dirlink")).unwrap();
            symlink(root.join("x.png"), root.join("inside").join("good")).unwrap();
            symlink("../x.png", root.join("inside").join("relative")).unwrap();
        }
        Fixture { _dir: dir, root }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Whatever the name, an answer is an existing path strictly inside the resolved root.
        #[test]
        fn a_resolved_name_never_leaves_its_root(name in hostile_name()) {
            let fixture = fixture();
            let canonical_root = fixture.root.canonicalize().unwrap();
            if let Some(path) = resolve_within(&fixture.root, &name) {
                prop_assert!(path.starts_with(&canonical_root), "{name:?} -> {path:?}");
                prop_assert_ne!(&path, &canonical_root);
                prop_assert_eq!(path.canonicalize().unwrap(), path.clone());
                prop_assert!(std::fs::read(&path).is_ok_and(|b| b != b"secret") || path.is_dir());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// A new file's path is the root plus exactly one plain name.
        #[test]
        fn a_new_file_is_one_name_below_its_root(name in hostile_name()) {
            let root = Path::new("/data/outputs/job");
            if let Some(path) = new_file_in(root, &name) {
                prop_assert_eq!(path.parent(), Some(root));
                prop_assert_eq!(path.file_name().and_then(|n| n.to_str()), Some(name.as_str()));
                prop_assert!(!name.contains(['/', '\0']) && name != "." && name != "..");
                #[cfg(windows)]
                prop_assert!(!name.contains('\\'));
            }
        }
    }

    #[test]
    fn plain_names_resolve() {
        let fixture = fixture();
        let root = fixture.root.canonicalize().unwrap();
        assert_eq!(
            resolve_within(&fixture.root, "x.png"),
            Some(root.join("x.png"))
        );
        assert_eq!(
            resolve_within(&fixture.root, "inside/x.png"),
            Some(root.join("inside").join("x.png"))
        );
        for refused in [
            "",
            ".",
            "..",
            "../out",
            "inside/../x.png",
            "./x.png",
            "inside//x.png",
            "inside/",
            "/etc/passwd",
            "x.png\0",
            "missing.png",
        ] {
            assert_eq!(resolve_within(&fixture.root, refused), None, "{refused:?}");
        }
        assert_eq!(
            new_file_in(&fixture.root, "y.png"),
            Some(fixture.root.join("y.png"))
        );
        for refused in ["", ".", "..", "a/b", "/y.png", "y.png/", "y\0"] {
            assert_eq!(new_file_in(&fixture.root, refused), None, "{refused:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn links_that_point_outside_are_refused_and_links_inside_followed() {
        let fixture = fixture();
        let root = fixture.root.canonicalize().unwrap();
        assert_eq!(resolve_within(&fixture.root, "link"), None, "file link out");
        assert_eq!(
            resolve_within(&fixture.root, "dirlink/out"),
            None,
            "folder link out"
        );
        assert_eq!(
            resolve_within(&fixture.root, "dirlink/root/x.png"),
            Some(root.join("x.png")),
            "out and back in again is inside"
        );
        assert_eq!(
            resolve_within(&fixture.root, "inside/good"),
            Some(root.join("x.png"))
        );
        assert_eq!(
            resolve_within(&fixture.root, "inside/relative"),
            Some(root.join("x.png"))
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_root_that_is_a_link_is_resolved_first() {
        let fixture = fixture();
        let alias = fixture.root.parent().unwrap().join("alias");
        std::os::unix::fs::symlink(&fixture.root, &alias).unwrap();
        assert_eq!(
            resolve_within(&alias, "x.png"),
            Some(fixture.root.canonicalize().unwrap().join("x.png"))
        );
        assert_eq!(resolve_within(&alias, "link"), None);
    }

    #[cfg(windows)]
    #[test]
    fn drive_relative_names_are_refused() {
        assert_eq!(new_file_in(Path::new("C:\\data"), "D:x.png"), None);
        assert_eq!(new_file_in(Path::new("C:\\data"), "a\\b"), None);
        assert_eq!(resolve_within(Path::new("C:\\data"), "\\x.png"), None);
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_download_is_in_place_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.png");
        std::fs::write(&target, "old").unwrap();

        // Broken off: the old file stays and nothing is left behind.
        let mut broken = AtomicFile::create(&target).await.unwrap();
        broken.write_all(b"half").await.unwrap();
        drop(broken);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(names_in(dir.path()), ["out.png"]);

        let mut whole = AtomicFile::create(&target).await.unwrap();
        whole.write_all(b"new ").await.unwrap();
        whole.write_all(b"bytes").await.unwrap();
        // Until the commit, readers see the old file.
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        whole.commit().await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new bytes");
        assert_eq!(names_in(dir.path()), ["out.png"]);
    }

    #[cfg(unix)]
    #[test]
    fn an_atomic_write_replaces_a_planted_link_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.txt");
        std::fs::write(&outside, "keep").unwrap();
        let target = dir.path().join("file.yaml");
        std::os::unix::fs::symlink(&outside, &target).unwrap();
        write_atomic(&target, b"mine").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert_eq!(std::fs::read(&target).unwrap(), b"mine");
        assert!(!target.symlink_metadata().unwrap().is_symlink());
    }

    #[test]
    fn every_write_has_a_temporary_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("extra_model_paths.yaml");
        assert_ne!(temporary_for(&file), temporary_for(&file));
        // Threads writing the same file at once each put a whole file in place; none of them fails.
        let payloads: Vec<Vec<u8>> = (0..16u8)
            .map(|i| vec![b'a' + i; 64 * 1024 + usize::from(i)])
            .collect();
        std::thread::scope(|scope| {
            for payload in &payloads {
                let file = &file;
                scope.spawn(move || write_atomic(file, payload).unwrap());
            }
        });
        let now = std::fs::read(&file).unwrap();
        assert!(
            payloads.contains(&now),
            "a mixed file of {} bytes",
            now.len()
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "extra_model_paths.yaml")
            .collect();
        assert!(names.is_empty(), "left behind: {names:?}");
    }
}
