//! `pgbackman`: the admin shell. All logic lives in pgbackman-cli.
fn main() -> std::process::ExitCode {
    // Hidden, for packaging/build-deb: the man pages and completions of both binaries.
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_some_and(|a| a == "__generate-assets") {
        let cmds = vec![pgbackman_cli::command(), pgbackman_agent::command()];
        return pgbackman_cli::assets::main(argv.next(), cmds);
    }
    pgbackman_cli::main_entry()
}
