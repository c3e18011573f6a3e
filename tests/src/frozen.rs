//! A disk that stops taking writes without failing them: a small ext4 file system on a loop
//! device that the test freezes with `fsfreeze`, as a storage snapshot or a stuck volume
//! does. Every write to it then waits, without an error, until it is thawed. Mounting and
//! freezing need privileges; where this process has none, [`FreezableDisk::mount`] says so and
//! the scenario is skipped.

use std::path::Path;
use std::process::Command;

/// An ext4 image mounted through a loop device on a temp dir; thawed and unmounted when
/// dropped.
pub struct FreezableDisk {
    dir: tempfile::TempDir,
    /// Holds the image file; removed after the unmount.
    _image: tempfile::TempDir,
}

impl FreezableDisk {
    /// Makes and mounts one of `size` (`64M`, …), or `None` where this process may not.
    pub fn mount(size: &str) -> anyhow::Result<Option<FreezableDisk>> {
        let (image, dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let file = image.path().join("disk.img");
        let made = run("truncate", &["-s", size, &file.display().to_string()])
            .and_then(|()| run("mkfs.ext4", &["-q", "-F", &file.display().to_string()]))
            .and_then(|()| {
                run(
                    "mount",
                    &[
                        "-o",
                        "loop",
                        &file.display().to_string(),
                        &dir.path().display().to_string(),
                    ],
                )
            });
        match made {
            Ok(()) => Ok(Some(FreezableDisk { dir, _image: image })),
            Err(why) => {
                eprintln!("skipped: cannot mount an ext4 image here: {why}");
                Ok(None)
            }
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Freezes it: writes wait from now on.
    pub fn freeze(&self) -> anyhow::Result<()> {
        run("fsfreeze", &["-f", &self.path().display().to_string()]).map_err(anyhow::Error::msg)
    }

    /// Thaws it: waiting writes go on.
    pub fn thaw(&self) -> anyhow::Result<()> {
        run("fsfreeze", &["-u", &self.path().display().to_string()]).map_err(anyhow::Error::msg)
    }
}

impl Drop for FreezableDisk {
    fn drop(&mut self) {
        // Thawed first (a no-op error when it is not frozen): nothing may stay waiting on it.
        let _ = self.thaw();
        // The loop device is released with the mount (`-o loop` sets it to clear itself).
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Runs `program` with `args`; what it said when it failed.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(err) => Err(format!("{program}: {err}")),
    }
}
