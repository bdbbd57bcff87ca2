//! The last lines of ComfyUI's log, read from the end of the file: time and memory depend on the lines asked for,
//! not on the size of the log (reading a whole 100 MB log took 675 ms in the old design and a 942 MB one crashed it).
//!
//! When the current file holds fewer lines than asked, the newest rotated files are read too (`comfyui.log.1`,
//! `.2`, … as the supervised backend names them, `comfyui-<time>.log` as NSSM does). A file truncated while it is
//! read gives what was still there. A progress bar written with `\r` shows as its last state, not every frame.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const BLOCK: u64 = 64 * 1024;
/// Upper bound on the bytes read for one answer, so a log of one enormous line cannot exhaust memory.
pub const MAX_TAIL_BYTES: u64 = 4 * 1024 * 1024;

/// `lines` with every occurrence of each of `secrets` replaced by `***`: ComfyUI's log shows what its nodes print,
/// and a prompt's `extra_data` carries the Comfy.org key.
pub fn masked(lines: Vec<String>, secrets: &[String]) -> Vec<String> {
    let secrets: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    if secrets.is_empty() {
        return lines;
    }
    lines
        .into_iter()
        .map(|line| {
            secrets
                .iter()
                .fold(line, |line, secret| line.replace(secret.as_str(), "***"))
        })
        .collect()
}

/// The last `n` lines of the log at `path` and its rotated predecessors, oldest first.
pub fn tail(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut budget = MAX_TAIL_BYTES;
    let mut files = vec![path.to_path_buf()];
    files.extend(rotated_siblings(path));
    for (index, file) in files.iter().enumerate() {
        let wanted = n - lines.len();
        let mut older = match tail_one(file, wanted, &mut budget) {
            Ok(older) => older,
            // The current file must exist; a rotated one may vanish between listing and reading.
            Err(error) if index == 0 || error.kind() != io::ErrorKind::NotFound => {
                return Err(error);
            }
            Err(_) => continue,
        };
        older.append(&mut lines);
        lines = older;
        if lines.len() >= n || budget == 0 {
            break;
        }
    }
    Ok(lines)
}

/// The last `n` lines of one file, reading backwards block by block. A file that shrinks while it is read
/// (truncated or rotated) is read again from its new end, once.
fn tail_one(path: &Path, n: usize, budget: &mut u64) -> io::Result<Vec<String>> {
    for _attempt in 0..2 {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        if n == 0 || len == 0 {
            return Ok(Vec::new());
        }
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        let mut start = len;
        // Newlines seen so far, not counting the one that ends the file: with `n` of them, the last `n` lines are
        // whole.
        let mut newlines = 0usize;
        let mut shrank = false;
        while start > 0 && *budget > 0 && newlines < n {
            let size = BLOCK.min(start).min(*budget);
            start -= size;
            let mut block = vec![0; size as usize];
            file.seek(SeekFrom::Start(start))?;
            if read_fully(&mut file, &mut block)? < block.len() {
                shrank = true;
                break;
            }
            *budget -= size;
            newlines += block.iter().filter(|b| **b == b'\n').count();
            if blocks.is_empty() && block.last() == Some(&b'\n') {
                newlines -= 1;
            }
            blocks.push(block);
        }
        if shrank {
            continue;
        }
        blocks.reverse();
        let bytes = blocks.concat();
        let text = String::from_utf8_lossy(&bytes);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let mut lines: Vec<String> = body
            .split('\n')
            .map(|line| {
                let line = line.strip_suffix('\r').unwrap_or(line);
                line.rsplit('\r').next().unwrap_or(line).to_owned()
            })
            .collect();
        // Unless the read reached the start of the file, the first piece is the end of an earlier line.
        if start > 0 {
            lines.remove(0);
        }
        let skip = lines.len().saturating_sub(n);
        return Ok(lines.split_off(skip));
    }
    Ok(Vec::new())
}

fn read_fully(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Rotated logs next to `path`, newest first.
pub fn rotated_siblings(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or(name);
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut rotated: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let candidate = entry.file_name().to_str()?.to_owned();
            let numbered = candidate
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            let stamped = candidate != name
                && candidate.starts_with(&format!("{stem}-"))
                && candidate.ends_with(&format!(".{extension}"));
            if !(numbered || stamped) {
                return None;
            }
            // A sibling that is a link out of the log's folder is not a rotated log: it is never read.
            let resolved = crate::fs_safe::resolve_within(dir, &candidate)?;
            Some((
                std::fs::metadata(&resolved).ok()?.modified().ok()?,
                resolved,
            ))
        })
        .collect();
    rotated.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    rotated.into_iter().map(|(_, path)| path).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    /// Sets `path`'s modification time to `seconds` ago.
    fn modified_ago(path: &Path, seconds: u64) {
        let at = std::time::SystemTime::now() - std::time::Duration::from_secs(seconds);
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    #[test]
    fn last_lines_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("comfyui.log");
        let text: String = (1..=1000).map(|i| format!("line {i}\n")).collect();
        write(&log, &text);
        assert_eq!(
            tail(&log, 3).unwrap(),
            ["line 998", "line 999", "line 1000"]
        );
        assert_eq!(tail(&log, 1).unwrap(), ["line 1000"]);
        assert_eq!(tail(&log, 5000).unwrap().len(), 1000);
        assert!(tail(&log, 0).unwrap().is_empty());
    }

    #[test]
    fn lines_across_block_boundaries_and_without_final_newline() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("comfyui.log");
        let long = "x".repeat(100_000);
        write(&log, &format!("first\n{long}\nlast without newline"));
        assert_eq!(
            tail(&log, 2).unwrap(),
            [long.clone(), "last without newline".to_owned()]
        );
        assert_eq!(tail(&log, 3).unwrap()[0], "first");
    }

    #[test]
    fn progress_bars_show_their_last_state() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("comfyui.log");
        write(
            &log,
            "start\r\n 10%|#  |\r 50%|## |\r100%|###|\nPrompt executed in 1.2 seconds\n",
        );
        assert_eq!(
            tail(&log, 3).unwrap(),
            ["start", "100%|###|", "Prompt executed in 1.2 seconds"]
        );
    }

    #[test]
    fn continues_into_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("comfyui.log");
        write(&dir.path().join("comfyui.log.2"), "a\nb\n");
        write(&dir.path().join("comfyui.log.1"), "c\nd\n");
        write(&log, "e\n");
        // Older files are read first by their modification time, set here rather than waited for.
        modified_ago(&dir.path().join("comfyui.log.2"), 10);
        modified_ago(&dir.path().join("comfyui.log.1"), 5);
        assert_eq!(tail(&log, 4).unwrap(), ["b", "c", "d", "e"]);
        assert_eq!(tail(&log, 10).unwrap(), ["a", "b", "c", "d", "e"]);
        write(&dir.path().join("other.log.1"), "not ours\n");
        assert_eq!(rotated_siblings(&log).len(), 2);
    }

    #[test]
    fn a_missing_log_is_an_error_and_truncation_is_survived() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("comfyui.log");
        assert_eq!(tail(&log, 10).unwrap_err().kind(), io::ErrorKind::NotFound);
        write(&log, "one\ntwo\n");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        file.write_all(b"fresh\n").unwrap();
        assert_eq!(tail(&log, 10).unwrap(), ["fresh"]);
    }

    #[test]
    fn one_enormous_line_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("comfyui.log");
        let mut file = File::create(&log).unwrap();
        let chunk = vec![b'y'; 1024 * 1024];
        for _ in 0..10 {
            file.write_all(&chunk).unwrap();
        }
        file.write_all(b"\nend\n").unwrap();
        let lines = tail(&log, 5).unwrap();
        assert_eq!(lines.last().map(String::as_str), Some("end"));
        assert!(lines.iter().map(String::len).sum::<usize>() <= MAX_TAIL_BYTES as usize);
    }

    /// A rotated name that is a link out of the log's folder is skipped, so the log viewer cannot be turned into
    /// a reader of any file; a link to a log in the folder is followed.
    #[cfg(unix)]
    #[test]
    fn rotated_links_out_of_the_folder_are_not_read() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        write(&secret, "password\n");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("comfyui.log");
        write(&dir.path().join("comfyui.log.3"), "old\n");
        std::os::unix::fs::symlink(&secret, dir.path().join("comfyui.log.1")).unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join("comfyui-20250101.log")).unwrap();
        std::os::unix::fs::symlink("comfyui.log.3", dir.path().join("comfyui.log.2")).unwrap();
        write(&log, "new\n");
        assert_eq!(
            rotated_siblings(&log).len(),
            2,
            "{:?}",
            rotated_siblings(&log)
        );
        assert!(!tail(&log, 100).unwrap().contains(&"password".to_owned()));
    }
}
