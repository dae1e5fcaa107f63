//! Reloads (`SIGHUP`): when a reload logs in, and what a static credential does.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_reload_logs_in_when_no_token_is_usable_or_the_password_changed() {
    let one = alone();
    assert!(one.credential.reload(), "no token yet: a login");
    one.credential
        .join_or_start(RefreshReason::Reload)
        .await
        .expect("the reload's login");
    assert_eq!(one.source.fetches(), 1, "joined the reload's login");

    assert!(
        !one.credential.reload(),
        "a usable token, the same password"
    );
    one.source.changed.store(true, Ordering::SeqCst);
    assert!(one.credential.reload(), "a changed password");
    one.credential
        .join_or_start(RefreshReason::Reload)
        .await
        .expect("the reload's login");
    assert_eq!(one.source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_static_credential_reloads_only_a_changed_token_file() {
    let (credential, source) = static_credential(Store::memory());
    assert!(!credential.reload(), "no token yet, the file unchanged");
    assert_eq!(source.fetches(), 0);
    source.changed.store(true, Ordering::SeqCst);
    assert!(credential.reload(), "the file changed");
    credential
        .join_or_start(RefreshReason::FileChanged)
        .await
        .expect("stored");
    assert_eq!(source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_static_token_never_goes_to_the_shared_store() {
    let backend = Arc::new(MemoryBackend::default());
    let (credential, source) = static_credential(shared_store(Arc::clone(&backend)));
    first_token(&credential).await;
    assert_eq!(source.fetches(), 1);
    let entry = backend.get("ipproxy:{cpaas}:token").await.expect("memory");
    assert_eq!(entry, None, "every replica reads the file itself");
}

#[tokio::test(start_paused = true)]
async fn a_static_credential_never_asks_the_shared_store() {
    // A store that fails every operation, not yet known to: one asked would show.
    let store = down_store();
    let (credential, source) = static_credential(store.clone());
    first_token(&credential).await;
    credential.force_refresh().await.expect("re-read");
    assert_eq!(source.fetches(), 2);
    assert!(store.is_up(), "no operation reached the store");
}
