//! An agent whose disk fills up: Emit answers RESOURCE_EXHAUSTED and health NOT_SERVING, no
//! receiver is flooded, and once space is freed the agent writes, serves and delivers again by
//! itself, without a restart. The disk is a real 48 MiB tmpfs the test mounts (skipped only
//! where mounting is not permitted), filled with `dd`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_proto::v1 as pb;
use herald_tests::{AgentOptions, World, event, eventually, subscription};
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;

const WAIT: Duration = Duration::from_secs(20);

/// A tmpfs of `size` mounted on a temp dir; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one, or `None` where this process may not mount.
    fn mount(size: &str) -> anyhow::Result<Option<Tmpfs>> {
        let dir = tempfile::tempdir()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Ok(Some(Tmpfs { dir })),
            Ok(out) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs here: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok(None)
            }
            Err(err) => {
                eprintln!("skipped: no mount command: {err}");
                Ok(None)
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left with `dd` (which stops when the disk is full).
    fn fill(&self) -> anyhow::Result<PathBuf> {
        let filler = self.path().join("filler");
        let _ = std::process::Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .args(["bs=1M", "status=none"])
            .status()?;
        Ok(filler)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn health(url: &str) -> anyhow::Result<ServingStatus> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(
        herald_tests::herald::connect(url).await?,
    );
    Ok(client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status())
}

#[tokio::test]
async fn a_full_disk_refuses_events_floods_no_receiver_and_recovers_by_itself() -> anyhow::Result<()>
{
    let Some(disk) = Tmpfs::mount("48m")? else {
        return Ok(());
    };
    let world = World::start().await?;
    let sub = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/orders"),
            &["order.*"],
        ))
        .await?;
    let agent = world
        .another_agent(AgentOptions {
            data_dir: Some(disk.path().join("agent")),
            queue_min_free_bytes: Some(4 * 1024 * 1024),
            ..Default::default()
        })
        .await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    let emit = |n: u32| {
        let agent = &agent;
        async move {
            agent
                .events()
                .await?
                .emit(pb::EmitRequest {
                    event: Some(event("shop-1", "order.created", &json!({ "n": n }))),
                })
                .await
                .map_err(anyhow::Error::from)
        }
    };
    emit(0).await?;
    world.receiver.wait_for_requests(1, WAIT).await?;

    // The disk fills up.
    let filler = disk.fill()?;
    let refused = eventually(WAIT, "Emit refused for a full disk", || async {
        Ok(emit(1).await.err())
    })
    .await?;
    let status = refused
        .downcast_ref::<tonic::Status>()
        .ok_or_else(|| anyhow::anyhow!("not a gRPC status: {refused}"))?;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("disk is full"),
        "{}",
        status.message()
    );
    eventually(WAIT, "health NOT_SERVING", || async {
        Ok((health(agent.url()).await? == ServingStatus::NotServing).then_some(()))
    })
    .await?;
    // No receiver is flooded meanwhile: nothing is sent again and again.
    let before = world.receiver.request_count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        world.receiver.request_count() <= before + 1,
        "{} requests while the disk was full",
        world.receiver.request_count() - before
    );

    // Space is freed: the agent writes again by itself, serves, and delivers.
    std::fs::remove_file(&filler)?;
    eventually(Duration::from_secs(60), "health SERVING again", || async {
        Ok((health(agent.url()).await? == ServingStatus::Serving).then_some(()))
    })
    .await?;
    let accepted = emit(2).await?.into_inner();
    let requests = eventually(WAIT, "the new event delivered", || async {
        let requests = world.receiver.requests();
        Ok(requests
            .iter()
            .any(|r| r.header("webhook-id") == Some(accepted.event_id.as_str()))
            .then_some(requests))
    })
    .await?;
    assert!(!requests.is_empty());
    Ok(())
}
