//! `pgbackman`: the admin shell. All logic lives in pgbackman-cli.
fn main() -> std::process::ExitCode {
    pgbackman_cli::main_entry()
}
