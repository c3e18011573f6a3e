//! The agent's id: given with `--id`, or made on the first start and kept in the data
//! directory's `agent-id` file, so that the agents list and the delivery log know one agent
//! across its restarts.

use std::io;
use std::path::Path;

use crate::Error;

/// The file in the data directory that keeps the id.
const FILE: &str = "agent-id";

/// The id kept in `dir`, or `None` when there is none yet. A file that holds no usable id is
/// refused ([`Error::AgentIdFile`]); an empty one, never written so (the file is synced before
/// it is put in place), counts as none, with a warning: the old id is not known any more.
pub fn read(dir: &Path) -> Result<Option<String>, Error> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => {
            // Checked as `--id` is: the control plane refuses any other.
            let id = id.trim();
            herald_core::validate::agent_id(id).map_err(|invalid| Error::AgentIdFile {
                path: path.display().to_string(),
                reason: invalid.reason,
            })?;
            Ok(Some(id.to_owned()))
        }
        Ok(_) => {
            tracing::warn!(
                path = %path.display(),
                "the agent id file is empty: a new id is made, and the agents list shows \
                 the old one as disconnected (give --id to keep an id whatever the file)"
            );
            Ok(None)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        // The file is there but holds no text, or is no file: said of the file.
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::IsADirectory
            ) =>
        {
            Err(Error::AgentIdFile {
                path: path.display().to_string(),
                reason: match err.kind() {
                    io::ErrorKind::InvalidData => "is not UTF-8 text".to_owned(),
                    _ => "is a directory, not a file".to_owned(),
                },
            })
        }
        Err(source) => Err(Error::DataDir {
            path: dir.display().to_string(),
            source,
        }),
    }
}

/// Makes a new id and keeps it in `dir`. Written to a temporary file, synced and renamed, so
/// that neither a crash nor a power loss leaves half an id, or none.
pub fn make(dir: &Path) -> io::Result<String> {
    let id = herald_core::ids::new_agent_id();
    let tmp = dir.join("agent-id.tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut file, id.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(FILE))?;
    if let Err(err) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        // Some file systems cannot sync a directory; the id is written all the same.
        tracing::warn!(dir = %dir.display(), error = %err, "cannot sync the data directory");
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_id_file_is_made_once_and_read_as_an_id_must_be() {
        let dir = tempfile::tempdir().expect("a temp dir");
        assert_eq!(
            read(dir.path()).expect("read"),
            None,
            "none before the first start"
        );
        let made = make(dir.path()).expect("made");
        assert!(herald_core::validate::agent_id(&made).is_ok(), "{made}");
        assert_eq!(read(dir.path()).expect("read"), Some(made));
        std::fs::write(dir.path().join(FILE), "").expect("written");
        assert_eq!(
            read(dir.path()).expect("read"),
            None,
            "an empty file is none"
        );
        std::fs::write(dir.path().join(FILE), "node 1\n").expect("written");
        let refused = read(dir.path()).unwrap_err();
        assert!(matches!(refused, Error::AgentIdFile { .. }), "{refused}");
        assert!(refused.is_setting(), "exit 64: restarting does not help");
        // Bytes that are no text, or a directory in the file's place: said of the file.
        std::fs::write(dir.path().join(FILE), b"agt_\xff\xfe").expect("written");
        let refused = read(dir.path()).unwrap_err();
        assert!(
            matches!(&refused, Error::AgentIdFile { path, .. } if path.ends_with(FILE)),
            "{refused}"
        );
        std::fs::remove_file(dir.path().join(FILE)).expect("removed");
        std::fs::create_dir(dir.path().join(FILE)).expect("a directory");
        let refused = read(dir.path()).unwrap_err();
        assert!(refused.to_string().contains("is a directory"), "{refused}");
    }
}
