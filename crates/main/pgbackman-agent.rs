//! `pgbackman-agent`: the backup agent of a backup server. All logic lives in pgbackman-agent.
fn main() -> std::process::ExitCode {
    pgbackman_agent::main_entry()
}
