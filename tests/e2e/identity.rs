//! A node's identity belongs to the agent that registered it first: real agents, real
//! scheduler, and a second agent that holds only the join token.

use std::os::unix::fs::PermissionsExt as _;

use suanli_tests::start_agent_logging_to;

use super::*;

#[test]
fn a_second_agent_with_the_join_token_cannot_take_a_node_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_scheduler_config(dir.path(), 3_000);
    let scheduler = start_scheduler(&config, &dir.path().join("scheduler-data"), None);
    let owner_dir = dir.path().join("owner");
    let mut owner = start_agent(&scheduler.grpc, "n1", "h100-host.json", &owner_dir);
    wait_for_ready(&scheduler, 1, "the owner to connect");

    // The credential is kept where only the agent's user can read it.
    let credential_file = owner_dir.join("node-credential");
    let credential = std::fs::read_to_string(&credential_file).expect("credential stored");
    assert!(credential.starts_with("suanli-node-"), "{credential}");
    let mode = std::fs::metadata(&credential_file)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // An impostor on another machine, with the join token and the node's name.
    let log = dir.path().join("impostor.log");
    let mut impostor = start_agent_logging_to(
        &scheduler.grpc,
        "n1",
        "h100-host.json",
        &dir.path().join("impostor"),
        std::fs::File::create(&log).expect("log file"),
    );
    wait_for("the impostor to be refused", MINUTE, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("held by a connected agent").then_some(())
    });
    assert!(impostor.is_running(), "it keeps retrying, harmlessly");

    // The node's work still goes to its owner, and runs there.
    let out_file = dir.path().join("where.txt");
    let file = write_job(
        dir.path(),
        "where",
        1,
        &format!("echo owner > {}", out_file.display()),
    );
    let id = submit(&scheduler, &file);
    wait_state(&scheduler, &id, "succeeded");
    assert_eq!(
        std::fs::read_to_string(&out_file).expect("ran").trim(),
        "owner"
    );
    wait_for_ready(&scheduler, 1, "the owner still connected");
    assert!(
        !dir.path().join("impostor/node-credential").exists(),
        "no credential was issued to the impostor"
    );

    // The owner crashes and comes back: its credential takes the node back at once, even if
    // the impostor is faster to knock.
    owner.kill9();
    let mut owner = start_agent(&scheduler.grpc, "n1", "h100-host.json", &owner_dir);
    wait_for_ready(&scheduler, 1, "the owner to return");
    assert_eq!(
        std::fs::read_to_string(&credential_file).expect("kept"),
        credential,
        "a returning agent keeps its credential"
    );
    let again = submit(&scheduler, &file);
    wait_state(&scheduler, &again, "succeeded");
    assert!(owner.is_running());
    impostor.kill9();
}
