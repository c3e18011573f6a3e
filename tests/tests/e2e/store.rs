//! The config store contract, checked against both implementations.

use herald_control_plane::store::{Store, conformance};
use herald_tests::Etcd;

#[tokio::test]
async fn etcd_keeps_the_store_contract() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let store = Store::etcd(&[etcd.endpoint()]).await?;
    conformance::check_all(&store, "/conformance").await;
    Ok(())
}

#[tokio::test]
async fn the_embedded_store_keeps_the_store_contract() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::embedded(dir.path()).await?;
    conformance::check_all(&store, "/conformance").await;
    Ok(())
}

#[tokio::test]
async fn the_store_authenticates_to_etcd_with_a_user_and_password() -> anyhow::Result<()> {
    use herald_control_plane::store::EtcdAuth;
    let etcd = Etcd::start().await?;
    let mut admin = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    admin.user_add("root", "s3cret-pass", None).await?;
    admin.user_grant_role("root", "root").await?;
    admin.auth_enable().await?;

    let auth = |password: &str| EtcdAuth {
        etcd_user: Some("root".into()),
        etcd_password: Some(password.into()),
        ..Default::default()
    };
    let anonymous = match Store::etcd(&[etcd.endpoint()]).await {
        Ok(store) => store.get("/herald/v1/anything").await.is_err(),
        Err(_) => true,
    };
    assert!(anonymous, "etcd refuses a client without credentials");
    let wrong = match Store::etcd_with(&[etcd.endpoint()], &auth("wrong")).await {
        Ok(store) => store.get("/herald/v1/anything").await.is_err(),
        Err(_) => true,
    };
    assert!(wrong, "etcd refuses a wrong password");
    let store = Store::etcd_with(&[etcd.endpoint()], &auth("s3cret-pass")).await?;
    conformance::check_all(&store, "/auth").await;
    Ok(())
}

#[tokio::test]
async fn the_store_speaks_mutual_tls_to_etcd() -> anyhow::Result<()> {
    use herald_control_plane::store::EtcdAuth;
    use herald_tests::TestCa;
    use herald_tests::tls::CertUse;
    let ca = TestCa::new();
    let etcd = Etcd::start_tls(&ca).await?;
    assert!(etcd.endpoint().starts_with("https://"));
    let dir = tempfile::tempdir()?;
    let ca_file = ca.write_ca_pem(dir.path())?;
    let (cert, key) = ca.write_pair(dir.path(), "herald-control-plane", CertUse::Client)?;

    let endpoint = etcd.endpoint();
    let refused = |auth: EtcdAuth| {
        let endpoint = endpoint.clone();
        async move {
            match Store::etcd_with(&[endpoint], &auth).await {
                Ok(store) => store.get("/herald/v1/anything").await.is_err(),
                Err(_) => true,
            }
        }
    };
    let without_certificate = EtcdAuth {
        etcd_ca_file: Some(ca_file.clone()),
        ..Default::default()
    };
    assert!(
        refused(without_certificate).await,
        "etcd requires a client certificate"
    );
    let other_ca = TestCa::new();
    let (stranger, stranger_key) = other_ca.write_pair(dir.path(), "stranger", CertUse::Client)?;
    let foreign = EtcdAuth {
        etcd_ca_file: Some(ca_file.clone()),
        etcd_cert_file: Some(stranger),
        etcd_key_file: Some(stranger_key),
        ..Default::default()
    };
    assert!(
        refused(foreign).await,
        "a certificate from another CA is refused"
    );

    let auth = EtcdAuth {
        etcd_ca_file: Some(ca_file),
        etcd_cert_file: Some(cert),
        etcd_key_file: Some(key),
        ..Default::default()
    };
    let store = Store::etcd_with(&[etcd.endpoint()], &auth).await?;
    conformance::check_all(&store, "/tls").await;
    Ok(())
}
