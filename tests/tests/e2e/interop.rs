//! Herald as a client in another language sees it: Python code generated from `proto/` by
//! Google's `protoc` and the gRPC Python plugin (Debian's `protobuf-compiler`,
//! `protobuf-compiler-grpc`, `python3-grpcio`), run by `tests/interop/client.py` against a real
//! control plane and agent. Neither Herald's own generated code nor its HTTP/2 stack is on the
//! client's side. A Go client is generated from the same file by Google's Go plugins and built
//! against Debian's grpc-go (`golang-go`, `golang-google-grpc-dev`): `tests/interop/client.go`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_tests::World;
use tokio::process::Command;

/// How long the Python client may take in all.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A text field of what `client.py` printed (`a.b` reaches into an object).
fn text<'a>(seen: &'a serde_json::Value, path: &str) -> &'a str {
    path.split('.')
        .fold(seen, |value, key| &value[key])
        .as_str()
        .unwrap_or_default()
}

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs Google's `protoc` on `proto/herald/v1/herald.proto` with the output `flags` given.
async fn protoc(flags: &[String]) -> anyhow::Result<()> {
    let proto_root = tests_dir().join("../proto");
    let output = Command::new("/usr/bin/protoc")
        .arg(format!("-I{}", proto_root.display()))
        // Debian's libprotobuf-dev: the well-known types (Timestamp, Duration).
        .arg("-I/usr/include")
        .args(flags)
        .arg("herald/v1/herald.proto")
        .current_dir(&proto_root)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "protoc refuses proto/: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Generates the Python modules of `proto/herald/v1/herald.proto` into `out`.
async fn generate_python(out: &Path) -> anyhow::Result<()> {
    protoc(&[
        format!("--python_out={}", out.display()),
        format!("--grpc_python_out={}", out.display()),
        "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin".into(),
    ])
    .await
}

/// `http://127.0.0.1:PORT` → `127.0.0.1:PORT`, as gRPC's Python client takes it.
fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// Runs a client in another language (`client`, given the control plane's and the agent's
/// addresses and a receiver URL ending in `path`) against `world`, checks what every client
/// must see, and returns the rest of what it printed.
///
/// Every client creates a subscription and emits one event to it: the event must arrive,
/// signed with the secret the client was given, as the Standard Webhooks reference library
/// checks it. Its bad calls must get the statuses the proto's comments promise, and a message
/// over the agent's limit the one gRPC's status table gives.
async fn drive(
    world: &World,
    mut client: Command,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let run = client
        .arg(host_port(world.control_plane.url()))
        .arg(host_port(world.agent.url()))
        .arg(world.receiver.url(path))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(CLIENT_TIMEOUT, run).await??;
    anyhow::ensure!(
        output.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout)?;

    assert!(text(&seen, "subscription_id").starts_with("sub_"), "{seen}");
    let requests = world
        .receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;
    let request = &requests[0];
    assert_eq!(request.path, path);
    assert_eq!(request.header("webhook-id"), Some(text(&seen, "event_id")));
    standardwebhooks::Webhook::new(text(&seen, "secret"))
        .map_err(|e| anyhow::anyhow!("the library refuses the secret: {e}"))?
        .verify(&request.body, &request.headers)
        .map_err(|e| anyhow::anyhow!("the webhook does not verify: {e}"))?;

    assert_eq!(text(&seen, "emit_without_type"), "INVALID_ARGUMENT");
    assert_eq!(text(&seen, "get_unknown_subscription"), "NOT_FOUND");
    assert_eq!(text(&seen, "emit_over_the_limit"), "RESOURCE_EXHAUSTED");
    Ok(seen)
}

#[tokio::test]
async fn a_python_grpc_client_generated_from_proto_drives_herald() -> anyhow::Result<()> {
    let world = World::start().await?;
    let generated = tempfile::tempdir()?;
    generate_python(generated.path()).await?;

    let mut client = Command::new("/usr/bin/python3");
    client
        .arg(tests_dir().join("interop/client.py"))
        .env("PYTHONPATH", generated.path());
    let seen = drive(&world, client, "/py-orders").await?;
    // The log's tail streamed the attempt that delivered it.
    assert_eq!(text(&seen, "attempt.event_id"), text(&seen, "event_id"));
    let status = seen["attempt"]["status_code"].as_u64().unwrap_or_default();
    assert!((200..300).contains(&status), "{seen}");
    assert_eq!(text(&seen, "attempt.outcome"), "OUTCOME_DELIVERED");
    // A message over the control plane's limit too.
    assert_eq!(text(&seen, "create_over_the_limit"), "RESOURCE_EXHAUSTED");
    // A burst past the agent's budget of request bytes: every call waited its turn and was
    // taken, gRPC C-core queueing beyond the 128 calls a connection carries.
    assert_eq!(seen["burst"]["ok"], 200, "{}", seen["burst"]);
    Ok(())
}

#[tokio::test]
async fn a_go_grpc_client_generated_from_proto_drives_herald() -> anyhow::Result<()> {
    let world = World::start().await?;
    // A GOPATH, as Debian lays Go libraries out (`/usr/share/gocode`): the generated package
    // under its import path, the client beside it. Debian's protoc-gen-go and
    // protoc-gen-go-grpc, as a Go team would run them: the proto names its Go import path, so
    // no `M` flag is needed.
    let gopath = tempfile::tempdir()?;
    let src = gopath.path().join("src");
    std::fs::create_dir_all(&src)?;
    protoc(&[
        format!("--go_out={}", src.display()),
        format!("--go-grpc_out={}", src.display()),
        "--plugin=protoc-gen-go=/usr/bin/protoc-gen-go".into(),
        "--plugin=protoc-gen-go-grpc=/usr/bin/protoc-gen-go-grpc".into(),
    ])
    .await?;
    let generated = src.join("example.invalid/herald/proto/herald/v1");
    let messages = std::fs::read_to_string(generated.join("herald.pb.go"))?;
    assert!(messages.contains("package heraldv1"), "the package name");
    let client_dir = src.join("heraldclient");
    std::fs::create_dir_all(&client_dir)?;
    std::fs::copy(
        tests_dir().join("interop/client.go"),
        client_dir.join("main.go"),
    )?;
    // GOPATH mode: Debian's libraries, no module downloads.
    let binary = gopath.path().join("client");
    let build = Command::new("/usr/bin/go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(&client_dir)
        .env("GO111MODULE", "off")
        .env(
            "GOPATH",
            format!("{}:/usr/share/gocode", gopath.path().display()),
        )
        .env("GOCACHE", gopath.path().join("cache"))
        .env("GOFLAGS", "")
        .kill_on_drop(true)
        .output();
    let built = tokio::time::timeout(CLIENT_TIMEOUT, build).await??;
    anyhow::ensure!(
        built.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    let seen = drive(&world, Command::new(&binary), "/go-orders").await?;
    // grpc-go queues calls beyond the 128 a connection carries, and every batch of the
    // burst waits its turn in the agent's budget and is taken.
    assert_eq!(seen["burst"], serde_json::json!({ "OK": 200 }), "{seen}");
    Ok(())
}

/// What a Herald gRPC server at `addr` tells a new HTTP/2 client, read off the wire: its
/// SETTINGS (identifier → value) and the window its connection opens with.
async fn http2_preamble(addr: std::net::SocketAddr) -> anyhow::Result<Preamble> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const SETTINGS: u8 = 0x4;
    const WINDOW_UPDATE: u8 = 0x8;
    const ACK: u8 = 0x1;
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    // An empty SETTINGS frame: a client's side of the preface.
    tcp.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]).await?;
    let mut preamble = Preamble {
        settings: std::collections::BTreeMap::new(),
        // RFC 9113 §6.9.2: every connection starts with a 65,535-byte window.
        connection_window: 65_535,
    };
    // Read until both came (the window's update may follow the SETTINGS' acknowledgement).
    let mut settings_seen = false;
    let mut window_seen = false;
    let read = async {
        while !(settings_seen && window_seen) {
            let mut header = [0u8; 9];
            tcp.read_exact(&mut header).await?;
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let (kind, flags) = (header[3], header[4]);
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & !(1 << 31);
            let mut payload = vec![0u8; length];
            tcp.read_exact(&mut payload).await?;
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    for setting in payload.chunks_exact(6) {
                        let id = u16::from_be_bytes([setting[0], setting[1]]);
                        let value =
                            u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                        preamble.settings.insert(id, value);
                    }
                    settings_seen = true;
                }
                WINDOW_UPDATE if stream == 0 => {
                    let increment =
                        u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    preamble.connection_window += u64::from(increment & !(1 << 31));
                    window_seen = true;
                }
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), read).await??;
    Ok(preamble)
}

/// What an HTTP/2 server says first.
struct Preamble {
    settings: std::collections::BTreeMap<u16, u32>,
    connection_window: u64,
}

/// RFC 9113 §6.5.2 setting identifiers.
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

#[tokio::test]
async fn both_grpc_servers_bound_the_calls_one_connection_carries() -> anyhow::Result<()> {
    let world = World::start().await?;

    let agent = http2_preamble(world.agent.addr()).await?;
    assert_eq!(
        agent.settings.get(&SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(&128),
        "{:?}",
        agent.settings
    );
    // Each call may send 64 KiB ahead of being read, and the connection 16 MiB: what calls
    // waiting for the agent's Emit budget hold back never fills the room of those being read.
    assert_eq!(
        agent.settings.get(&SETTINGS_INITIAL_WINDOW_SIZE),
        Some(&65_536)
    );
    assert_eq!(agent.connection_window, 16 << 20);

    let control_plane = http2_preamble(world.control_plane.addr()).await?;
    assert_eq!(
        control_plane.settings.get(&SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(&128),
        "{:?}",
        control_plane.settings
    );
    // A report stream waiting for the replica's budget of reports holds at most 256 KiB
    // unread, and leaves the agent's other calls on its connection room to go on.
    assert_eq!(
        control_plane.settings.get(&SETTINGS_INITIAL_WINDOW_SIZE),
        Some(&(256 << 10))
    );
    assert_eq!(control_plane.connection_window, 1 << 20);
    Ok(())
}
