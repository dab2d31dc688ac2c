//! The interactive shell as a person uses it: the real binary in a real terminal (a tmux pane),
//! driven with keystrokes, asserting what the screen shows and what the catalog holds afterwards.
//!
//! tmux is the terminal emulator: it answers rustyline's terminal queries, keeps the screen with
//! its scrollback (read with capture-pane, polled until an expectation holds or a few seconds
//! pass), and keeps the pane after the program exits (`remain-on-exit`) so that its exit status
//! can be read. Every test gets its own tmux server (socket in a temp dir), killed on drop, also
//! when the test panics; a failing expectation prints the keys sent and the numbered screen.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::Env;

/// How long one expectation may take (the debug binary and the catalog answer in milliseconds).
const WAIT: Duration = Duration::from_secs(6);
const PROMPT: &str = "[pgbackman]$";

/// One `pgbackman` shell in a tmux pane.
struct Shell {
    dir: tempfile::TempDir,
    /// Process id of pgbackman (the pane's process: `env` execs it).
    pid: u32,
    /// Absolute line (scrollback + screen) of the cursor when keys were last sent.
    sent: usize,
    /// Absolute line from which [`Shell::expect`] searches; advanced by every match.
    pos: usize,
    /// The keys sent so far, for failure messages.
    keys: Vec<String>,
}

struct Cursor {
    /// Absolute line: history_size + cursor_y.
    line: usize,
    dead: bool,
    /// Exit status, once tmux has reaped the process.
    status: Option<i32>,
    /// The signal that killed the process, if one did.
    signal: Option<i32>,
}

impl Shell {
    /// `pgbackman --catalog <conninfo>` with HOME = the Env's home, TERM=xterm, 250x50.
    fn start(env: &Env) -> Shell {
        Shell::start_with(env, &env.conninfo())
    }

    fn start_with(env: &Env, conninfo: &str) -> Shell {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("tmux.conf");
        std::fs::write(
            &conf,
            "set -g remain-on-exit on\nset -g history-limit 50000\nset -g status off\n",
        )
        .unwrap();
        let mut sh = Shell {
            dir,
            pid: 0,
            sent: 0,
            pos: 0,
            keys: Vec::new(),
        };
        // The environment of the shell is the one of the other end-to-end tests: isolated HOME,
        // no PG* variables. The tmux server passes its own environment on to the pane.
        let base = common::command(env.home.path());
        let mut c = sh.tmux();
        for (k, v) in base.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.env_remove("TMUX").env("LANG", "C.UTF-8");
        c.arg("-f")
            .arg(&conf)
            .args([
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                "250",
                "-y",
                "50",
                "--",
            ])
            .args(["env", "TERM=xterm"])
            .arg(base.get_program())
            .arg("--catalog")
            .arg(conninfo);
        let out = c.output().expect("tmux runs (apt-get install tmux)");
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        sh.pid = sh
            .tmux_out(&["display-message", "-p", "-t", "t", "#{pane_pid}"])
            .trim()
            .parse()
            .unwrap();
        sh
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-u").arg("-S").arg(self.socket());
        c.stdin(Stdio::null());
        c
    }

    fn tmux_out(&self, args: &[&str]) -> String {
        let out = self.tmux().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every line of scrollback and screen, indexed by absolute line, trailing blanks trimmed.
    fn lines(&self) -> Vec<String> {
        self.tmux_out(&["capture-pane", "-p", "-t", "t", "-S", "-", "-E", "-"])
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect()
    }

    /// The screen as text, wrapped lines joined (for parsing long output such as JSON).
    fn joined(&self) -> String {
        self.tmux_out(&["capture-pane", "-p", "-J", "-t", "t", "-S", "-", "-E", "-"])
    }

    fn cursor(&self) -> Cursor {
        let s = self.tmux_out(&[
            "display-message",
            "-p",
            "-t",
            "t",
            "#{history_size},#{cursor_y},#{pane_dead},#{pane_dead_status},#{pane_dead_signal}",
        ]);
        let f: Vec<&str> = s.trim().split(',').collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<i32>().ok());
        Cursor {
            line: f[0].parse::<usize>().unwrap() + f[1].parse::<usize>().unwrap(),
            dead: f.get(2) == Some(&"1"),
            status: num(3),
            signal: num(4),
        }
    }

    /// Sends tmux key names (`Enter`, `Tab`, `Up`, `C-c`, `C-d`).
    fn keys(&mut self, keys: &[&str]) {
        self.sent = self.cursor().line;
        self.keys.push(format!("{keys:?}"));
        self.tmux_out(&[&["send-keys", "-t", "t"], keys].concat());
    }

    /// Types text literally (no Enter).
    fn type_text(&mut self, text: &str) {
        self.sent = self.cursor().line;
        self.keys.push(format!("{text:?}"));
        self.tmux_out(&["send-keys", "-t", "t", "-l", text]);
    }

    /// Types a line and presses Enter.
    fn line(&mut self, text: &str) {
        self.type_text(text);
        self.tmux_out(&["send-keys", "-t", "t", "Enter"]);
        self.keys.push("Enter".into());
    }

    #[track_caller]
    fn fail(&self, what: &str) -> ! {
        // Numbered lines; runs of blank lines shown as one.
        let mut screen = String::new();
        let mut blank = false;
        for (i, l) in self.lines().iter().enumerate() {
            if l.is_empty() && blank {
                continue;
            }
            blank = l.is_empty();
            screen.push_str(&format!("{i:>4}| {l}\n"));
        }
        panic!(
            "{what}\n---- keys sent ----\n{}\n---- screen (searching from line {}) ----\n{screen}-------------------",
            self.keys.join(" "),
            self.pos,
        );
    }

    /// Waits for `needle` at or after the search position; returns the text from there on and
    /// moves the search position to the line where the needle ends.
    #[track_caller]
    fn expect(&mut self, needle: &str) -> String {
        let t0 = Instant::now();
        loop {
            let lines = self.lines();
            let from = self.pos.min(lines.len());
            let text = lines[from..].join("\n");
            if let Some(i) = text.find(needle) {
                let end = i + needle.len();
                self.pos = from + text[..end].matches('\n').count();
                return text;
            }
            if t0.elapsed() > WAIT {
                self.fail(&format!("timed out waiting for {needle:?}"));
            }
            sleep(Duration::from_millis(30));
        }
    }

    /// Waits until the line of the cursor reads `exact` (trailing blanks ignored). `new_line`:
    /// it must be below the line where keys were last sent (a new prompt or question), else it
    /// may be the same line (the edited input line). Returns the text from the search position
    /// up to the cursor line, which becomes the new search position.
    #[track_caller]
    fn expect_cursor_line(&mut self, exact: &str, new_line: bool) -> String {
        let t0 = Instant::now();
        loop {
            let c = self.cursor();
            let lines = self.lines();
            let ok_line = if new_line {
                c.line > self.sent
            } else {
                c.line >= self.sent
            };
            if ok_line && lines.get(c.line).map(String::as_str) == Some(exact) {
                let from = self.pos.min(c.line);
                let text = lines[from..c.line].join("\n");
                self.pos = c.line;
                return text;
            }
            if c.dead {
                self.fail(&format!(
                    "the shell exited (status {:?}, signal {:?}) while waiting for the line {exact:?}",
                    c.status, c.signal
                ));
            }
            if t0.elapsed() > WAIT {
                self.fail(&format!(
                    "timed out waiting for the cursor line to read {exact:?}"
                ));
            }
            sleep(Duration::from_millis(30));
        }
    }

    /// Waits for a question of the running command (`Hostname:`), on a new line.
    #[track_caller]
    fn expect_question(&mut self, q: &str) -> String {
        self.expect_cursor_line(q, true)
    }

    /// Waits for a fresh `[pgbackman]$ ` prompt; returns the output since the search position.
    #[track_caller]
    fn expect_prompt(&mut self) -> String {
        self.expect_cursor_line(PROMPT, true)
    }

    /// Runs one command line and returns its output (the lines between it and the next prompt).
    #[track_caller]
    fn run(&mut self, line: &str) -> String {
        self.line(line);
        let out = self.expect_prompt();
        // Drop the echoed command line.
        out.split_once('\n')
            .map_or(String::new(), |(_, rest)| rest.to_string())
    }

    /// Waits for the program to exit; returns its exit status.
    #[track_caller]
    fn exit_status(&mut self) -> i32 {
        let t0 = Instant::now();
        loop {
            let c = self.cursor();
            let (status, signal) = match (c.dead, c.status, c.signal) {
                (true, st, sig) if st.is_some() || sig.is_some() => (st, sig),
                // Under load tmux sometimes leaves the exited process unreaped for seconds: read
                // its status from the zombie (field 52 of /proc/PID/stat, as waitpid reports it).
                _ => match self.zombie_status() {
                    Some(w) if w & 0x7f == 0 => (Some((w >> 8) & 0xff), None),
                    Some(w) => (None, Some(w & 0x7f)),
                    None => (None, None),
                },
            };
            if let Some(st) = status {
                return st;
            }
            if let Some(sig) = signal {
                self.fail(&format!("the shell was killed by signal {sig}"));
            }
            if t0.elapsed() > WAIT {
                self.fail("timed out waiting for the shell to exit");
            }
            sleep(Duration::from_millis(30));
        }
    }

    /// The wait status of the shell's process if it has exited but is not reaped yet.
    fn zombie_status(&self) -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Fields after "(comm)": state is field 3, exit_code field 52.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        if fields.first() != Some(&"Z") {
            return None;
        }
        fields.get(52 - 3)?.parse().ok()
    }

    /// Asserts that `text` (output taken from the screen) contains `needle`, else fails with the
    /// screen.
    #[track_caller]
    fn assert_has(&self, text: &str, needle: &str) {
        if !text.contains(needle) {
            self.fail(&format!("expected {needle:?} in:\n{text}"));
        }
    }

    #[track_caller]
    fn assert_lacks(&self, text: &str, needle: &str) {
        if text.contains(needle) {
            self.fail(&format!("did not expect {needle:?} in:\n{text}"));
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self
            .tmux()
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A shell on a fresh catalog, past its welcome banner.
fn shell(env: &Env) -> Shell {
    let mut sh = Shell::start(env);
    sh.expect("Welcome to the PostgreSQL Backup Manager shell");
    sh.expect_cursor_line(PROMPT, false);
    sh
}

// ---- 1. prompts for missing arguments --------------------------------------------------------

#[test]
fn missing_arguments_are_asked_for() {
    let env = Env::new();
    let mut sh = shell(&env);
    sh.line("register_backup_server");
    sh.expect_question("Hostname:");
    sh.line("bs1");
    sh.expect_question("Domain [example.org]:");
    sh.line("example.org");
    sh.expect_question("Remarks []:");
    sh.line("Rack 4, Row B — ü");
    sh.expect_question("Register this backup server? (yes/no):");
    // Nothing is written before the confirmation.
    assert_eq!(env.sql("select count(*) from backup_server"), "0");
    sh.line("yes");
    let out = sh.expect_prompt();
    sh.assert_has(
        &out,
        "[DONE] Backup server bs1.example.org registered with SrvID 1.",
    );
    assert_eq!(
        env.sql(
            "select server_id || '|' || hostname || '|' || domain_name || '|' || fqdn || '|' || status || '|' || remarks from backup_server"
        ),
        "1|bs1|example.org|bs1.example.org|RUNNING|Rack 4, Row B — ü"
    );
    // The audit log records the command as typed and the OS user.
    assert_eq!(
        env.sql(
            "select os_user || '|' || command || '|' || operation from audit_log where table_name like '%backup_server'"
        ),
        "tester|register_backup_server|INSERT"
    );
}

// ---- 2. defaults in brackets ------------------------------------------------------------------

#[test]
fn enter_accepts_the_defaults_in_brackets() {
    let env = Env::new();
    // The domain default comes from the catalog, not from the binary.
    env.cmd("update_pgsql_node_default_config domain=example.net")
        .ok();
    let mut sh = shell(&env);
    sh.line("register_pgsql_node");
    sh.expect_question("Hostname:");
    sh.line("pg01");
    sh.expect_question("Domain [example.net]:");
    sh.keys(&["Enter"]);
    sh.expect_question("Port [5432]:");
    sh.keys(&["Enter"]);
    sh.expect_question("Admin user [postgres]:");
    sh.keys(&["Enter"]);
    sh.expect_question("Status (RUNNING or STOPPED) [STOPPED]:");
    sh.keys(&["Enter"]);
    sh.expect_question("Remarks []:");
    sh.keys(&["Enter"]);
    sh.expect_question("Register this PgSQL node? (yes/no):");
    sh.line("y");
    let out = sh.expect_prompt();
    sh.assert_has(
        &out,
        "[DONE] PgSQL node pg01.example.net registered with NodeID 1.",
    );
    assert_eq!(
        env.sql(
            "select fqdn || '|' || pgport || '|' || admin_user || '|' || status || '|' || remarks || '|' || sslmode from pgsql_node"
        ),
        "pg01.example.net|5432|postgres|STOPPED||prefer"
    );
    // Given values replace the defaults; the case of the answers is kept.
    sh.line("register_pgsql_node");
    sh.expect_question("Hostname:");
    sh.line("PG02");
    sh.expect_question("Domain [example.net]:");
    sh.line("Example.COM");
    sh.expect_question("Port [5432]:");
    sh.line("5433");
    sh.expect_question("Admin user [postgres]:");
    sh.line("Backup");
    sh.expect_question("Status (RUNNING or STOPPED) [STOPPED]:");
    sh.keys(&["Enter"]);
    sh.expect_question("Remarks []:");
    sh.line("Billing Replica");
    sh.expect_question("Register this PgSQL node? (yes/no):");
    sh.line("yes");
    let out = sh.expect_prompt();
    sh.assert_has(
        &out,
        "[DONE] PgSQL node PG02.Example.COM registered with NodeID 2.",
    );
    assert_eq!(
        env.sql(
            "select fqdn || '|' || pgport || '|' || admin_user || '|' || status || '|' || remarks from pgsql_node where node_id = 2"
        ),
        "PG02.Example.COM|5433|Backup|STOPPED|Billing Replica"
    );
}

// ---- 3. confirmations --------------------------------------------------------------------------

#[test]
fn answering_no_aborts_and_other_answers_ask_again() {
    let env = Env::new();
    env.cmd("register_backup_server bs1 example.org first").ok();
    let mut sh = shell(&env);
    let question = "Are you sure you want to delete backup server 1 (SrvID 1)? (yes/no):";
    sh.line("delete_backup_server 1");
    sh.expect_question(question);
    sh.line("maybe");
    let out = sh.expect_question(question);
    sh.assert_has(&out, "Please answer yes or no.");
    sh.line("no");
    let out = sh.expect_prompt();
    sh.assert_has(&out, "[ABORTED] Command interrupted by the user.");
    sh.assert_lacks(&out, "[DONE]");
    assert_eq!(
        env.sql("select count(*) from backup_server where fqdn = 'bs1.example.org'"),
        "1"
    );
    // An empty answer is no answer either; "YES" in capitals is a yes.
    let question =
        "Are you sure you want to delete backup server bs1.example.org (SrvID 1)? (yes/no):";
    sh.line("delete_backup_server bs1.example.org");
    sh.expect_question(question);
    sh.keys(&["Enter"]);
    let out = sh.expect_question(question);
    sh.assert_has(&out, "Please answer yes or no.");
    sh.line("YES");
    let out = sh.expect_prompt();
    sh.assert_has(
        &out,
        "[DONE] Backup server bs1.example.org (SrvID 1) deleted.",
    );
    assert_eq!(env.sql("select count(*) from backup_server"), "0");
}

// ---- 4. Ctrl-C and Ctrl-D ------------------------------------------------------------------------

#[test]
fn ctrl_c_abandons_the_command_not_the_shell() {
    let env = Env::new();
    let mut sh = shell(&env);
    // On an empty line: just a new prompt.
    sh.keys(&["C-c"]);
    let out = sh.expect_prompt();
    sh.assert_lacks(&out, "[ABORTED]");
    // On a half-typed line: the line is dropped, nothing runs.
    sh.type_text("register_backup_server bs9 example.org x");
    sh.keys(&["C-c"]);
    sh.expect_prompt();
    // At the first question.
    sh.line("register_backup_server");
    sh.expect_question("Hostname:");
    sh.keys(&["C-c"]);
    let out = sh.expect_prompt();
    sh.assert_has(&out, "[ABORTED] Command interrupted by the user.");
    // Later, with answers already given; at the confirmation too.
    sh.line("register_backup_server");
    sh.expect_question("Hostname:");
    sh.line("bs1");
    sh.expect_question("Domain [example.org]:");
    sh.keys(&["C-c"]);
    let out = sh.expect_prompt();
    sh.assert_has(&out, "[ABORTED] Command interrupted by the user.");
    sh.line("register_backup_server");
    sh.expect_question("Hostname:");
    sh.line("bs1");
    sh.expect_question("Domain [example.org]:");
    sh.keys(&["Enter"]);
    sh.expect_question("Remarks []:");
    sh.keys(&["Enter"]);
    sh.expect_question("Register this backup server? (yes/no):");
    sh.keys(&["C-c"]);
    let out = sh.expect_prompt();
    sh.assert_has(&out, "[ABORTED] Command interrupted by the user.");
    // Ctrl-D at a question abandons the command too, and does not leave the shell.
    sh.line("register_backup_server");
    sh.expect_question("Hostname:");
    sh.keys(&["C-d"]);
    let out = sh.expect_prompt();
    sh.assert_has(&out, "[ABORTED] Command interrupted by the user.");
    sh.assert_lacks(&out, "Done, thank you");
    // The shell still works.
    let out = sh.run("show_backup_servers");
    sh.assert_has(&out, "(0 rows)");
    assert_eq!(env.sql("select count(*) from backup_server"), "0");
    assert_eq!(env.sql("select count(*) from audit_log"), "0");
}

#[test]
fn ctrl_c_interrupts_a_running_command() {
    use std::io::Read;
    let env = Env::new();
    // A "node" that accepts connections and never answers: the command hangs on it.
    let silent = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    env.cmd(&format!(
        "register_pgsql_node 127.0.0.3 \"\" {port} postgres STOPPED \"\""
    ))
    .ok();
    let mut sh = shell(&env);
    sh.line("show_databases_without_backup_definitions 127.0.0.3");
    // Wait until the command really runs: it connected and sent its startup packet.
    silent.set_nonblocking(true).unwrap();
    let t0 = Instant::now();
    let mut conn = loop {
        match silent.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && t0.elapsed() < WAIT => {
                sleep(Duration::from_millis(20))
            }
            Err(e) => sh.fail(&format!("the command did not connect to the node: {e}")),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).unwrap_or(0);
    assert!(n > 0, "no startup packet from the shell");
    sh.keys(&["C-c"]);
    let out = sh.expect_prompt();
    sh.assert_has(&out, "[ABORTED] Command interrupted by the user.");
    // The abandoned command let go of its connection.
    let mut rest = Vec::new();
    let eof = conn.read_to_end(&mut rest);
    assert!(
        eof.is_ok(),
        "the connection to the node stayed open: {eof:?}"
    );
    // The shell goes on.
    let out = sh.run("show_pgsql_nodes");
    sh.assert_has(&out, "127.0.0.3");
    sh.assert_has(&out, "(1 row)");
}

// ---- 5. tab completion ---------------------------------------------------------------------------

#[test]
fn tab_completes_command_names() {
    let env = Env::new();
    env.cmd("register_backup_server bs1 example.org first").ok();
    let mut sh = shell(&env);
    // One candidate: completed.
    sh.type_text("register_backup_d");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line("[pgbackman]$ register_backup_definition", false);
    sh.keys(&["C-c"]);
    sh.expect_prompt();
    // Several candidates: Tab completes their common prefix, a second Tab lists them (like bash).
    sh.type_text("show_backup_se");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(&format!("{PROMPT} show_backup_server"), false);
    sh.keys(&["Tab"]);
    let listed = sh.expect("show_backup_server_stats");
    for full in [
        "show_backup_servers",
        "show_backup_server_config",
        "show_backup_server_default_config",
    ] {
        sh.assert_has(&listed, full);
    }
    // The line is shown again below the list, as typed so far.
    sh.expect_cursor_line(&format!("{PROMPT} show_backup_server"), true);
    sh.type_text("s");
    sh.keys(&["Enter"]);
    let out = sh.expect_prompt();
    sh.assert_has(&out, "bs1.example.org");
    sh.assert_has(&out, "(1 row)");
    // After `help`, command names are completed too.
    sh.type_text("help register_backup_d");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(&format!("{PROMPT} help register_backup_definition"), false);
    sh.keys(&["Enter"]);
    let out = sh.expect_prompt();
    sh.assert_has(&out, "Examples:");
    // No candidate: the line stays as typed.
    sh.type_text("nosuch");
    sh.keys(&["Tab"]);
    sleep(Duration::from_millis(200));
    sh.expect_cursor_line(&format!("{PROMPT} nosuch"), false);
    sh.keys(&["C-c"]);
    sh.expect_prompt();
}

#[test]
fn tab_completes_server_and_node_names() {
    let env = Env::new();
    env.cmd("register_backup_server bs1 example.org first").ok();
    env.cmd("register_pgsql_node pg01 example.org 5432 postgres STOPPED \"\"")
        .ok();
    let mut sh = shell(&env);
    sh.type_text("show_backup_server_config bs");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(
        &format!("{PROMPT} show_backup_server_config bs1.example.org"),
        false,
    );
    sh.keys(&["Enter"]);
    let out = sh.expect_prompt();
    sh.assert_has(&out, "root_backup_partition");
    sh.type_text("show_pgsql_node_config pg");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(
        &format!("{PROMPT} show_pgsql_node_config pg01.example.org"),
        false,
    );
    sh.keys(&["C-c"]);
    sh.expect_prompt();
    // Names registered in this session are known to completion right after the command.
    let out = sh.run("register_backup_server zz9 example.org second");
    sh.assert_has(
        &out,
        "[DONE] Backup server zz9.example.org registered with SrvID 2.",
    );
    sh.type_text("delete_backup_server zz");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(
        &format!("{PROMPT} delete_backup_server zz9.example.org"),
        false,
    );
    sh.keys(&["Enter"]);
    sh.expect_question(
        "Are you sure you want to delete backup server zz9.example.org (SrvID 2)? (yes/no):",
    );
    sh.line("yes");
    let out = sh.expect_prompt();
    sh.assert_has(
        &out,
        "[DONE] Backup server zz9.example.org (SrvID 2) deleted.",
    );
    // ... and forgotten once deleted.
    sh.type_text("show_backup_server_stats zz");
    sh.keys(&["Tab"]);
    sleep(Duration::from_millis(200));
    sh.expect_cursor_line(&format!("{PROMPT} show_backup_server_stats zz"), false);
    sh.keys(&["C-c"]);
    sh.expect_prompt();
    assert_eq!(
        env.sql("select string_agg(fqdn, ',' order by server_id) from backup_server"),
        "bs1.example.org"
    );
}

#[test]
fn tab_completes_names_at_questions() {
    let env = Env::new();
    env.cmd("register_backup_server bs1 example.org first").ok();
    let mut sh = shell(&env);
    // A question for a server completes server names.
    sh.line("delete_backup_server");
    sh.expect_question("SrvID | FQDN:");
    sh.type_text("bs");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line("SrvID | FQDN: bs1.example.org", false);
    sh.keys(&["Enter"]);
    sh.expect_question(
        "Are you sure you want to delete backup server bs1.example.org (SrvID 1)? (yes/no):",
    );
    sh.line("no");
    let out = sh.expect_prompt();
    sh.assert_has(&out, "[ABORTED] Command interrupted by the user.");
    // A question for a new host name offers no command names.
    sh.line("register_backup_server");
    sh.expect_question("Hostname:");
    sh.type_text("reg");
    sh.keys(&["Tab"]);
    sleep(Duration::from_millis(200));
    sh.expect_cursor_line("Hostname: reg", false);
    sh.keys(&["C-c"]);
    sh.expect_prompt();
    assert_eq!(env.sql("select count(*) from backup_server"), "1");
}

// ---- 6. help ---------------------------------------------------------------------------------------

#[test]
fn help_lists_commands_and_explains_one() {
    let env = Env::new();
    let mut sh = shell(&env);
    let out = sh.run("help");
    sh.assert_has(
        &out,
        "Commands (help <command> for arguments and examples):",
    );
    for name in [
        "register_backup_server",
        "delete_backup_server",
        "register_pgsql_node",
        "register_backup_definition",
        "show_backup_catalog",
        "show_audit_log",
        "show_history",
        "set",
        "quit",
    ] {
        sh.assert_has(&out, &format!("  {name} "));
    }
    sh.assert_has(&out, "Backup servers:");
    sh.assert_has(&out, "PgSQL nodes:");
    let out = sh.run("help register_backup_definition");
    sh.assert_has(&out, "Usage:");
    sh.assert_has(
        &out,
        "register_backup_definition [SrvID | FQDN] [NodeID | FQDN] [DBname]",
    );
    sh.assert_has(&out, "Examples:");
    sh.assert_has(
        &out,
        "register_backup_definition backup01.example.org pg01.example.org \"#all_databases#\" \"test,scratch\"",
    );
    // \? is help; an unknown command in help gets suggestions.
    let out = sh.run("\\?");
    sh.assert_has(
        &out,
        "Commands (help <command> for arguments and examples):",
    );
    let out = sh.run("help show_backup_server");
    sh.assert_has(
        &out,
        "[ERROR] no command \"show_backup_server\"; did you mean",
    );
}

// ---- 7. output format --------------------------------------------------------------------------------

#[test]
fn tables_fit_the_terminal_and_set_expanded_shows_blocks() {
    let env = Env::new();
    let long = "rack 4, row B, the cold aisle by the north wall, next to the tape library that nobody uses";
    env.cmd(&format!(
        "register_backup_server bs1 example.org \"{long}\""
    ))
    .ok();
    let mut sh = shell(&env);
    // No COLUMNS: the width is the terminal's, read at each command.
    sh.tmux_out(&["resize-window", "-t", "t", "-x", "80"]);
    let out = sh.run("show_backup_servers");
    sh.assert_has(&out, "| bs1.example.org |");
    sh.assert_has(&out, "the cold aisle");
    for l in out.lines() {
        if l.chars().count() > 80 {
            sh.fail(&format!("a line wider than the 80-column terminal: {l}"));
        }
    }
    let out = sh.run("set expanded on");
    sh.assert_has(&out, "[DONE] expanded = on");
    let out = sh.run("show_backup_servers");
    sh.assert_has(&out, "-[ RECORD 1 ]");
    sh.assert_has(&out, "FQDN            | bs1.example.org");
    sh.run("set expanded off");
    let out = sh.run("show_backup_servers");
    sh.assert_has(&out, "| SrvID |");
}

#[test]
fn set_output_format_json_prints_json() {
    let env = Env::new();
    env.cmd("register_backup_server bs1 example.org \"Rack 4, row \\\"B\\\"\"")
        .ok();
    env.cmd("register_backup_server bs2 example.org \"\" --status STOPPED")
        .ok();
    let mut sh = shell(&env);
    let out = sh.run("set output_format=json");
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| sh.fail(&format!("not JSON ({e}): {out}")));
    assert_eq!(
        v,
        serde_json::json!({"status": "done", "messages": ["output_format = json"]})
    );
    sh.run("show_backup_servers");
    // JSON lines may be wider than the terminal: read them from the joined screen.
    let screen = sh.joined();
    let line = screen
        .lines()
        .rfind(|l| l.trim_start().starts_with("{\"backup_servers\""))
        .unwrap_or_else(|| sh.fail("no JSON listing on the screen"));
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| sh.fail(&format!("not JSON ({e}): {line}")));
    let rows = v["backup_servers"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[0]["srvid"], serde_json::json!(1), "{v}");
    assert_eq!(rows[0]["fqdn"], serde_json::json!("bs1.example.org"), "{v}");
    assert_eq!(
        rows[0]["remarks"],
        serde_json::json!("Rack 4, row \"B\""),
        "{v}"
    );
    assert_eq!(rows[1]["status"], serde_json::json!("STOPPED"), "{v}");
    // The format stays until changed back.
    let out = sh.run("set output_format=table");
    sh.assert_has(&out, "[DONE] output_format = table");
    let out = sh.run("show_backup_servers");
    sh.assert_has(&out, "(2 rows)");
    sh.assert_lacks(&out, "{\"backup_servers\"");
    // A bad value is an error and changes nothing.
    let out = sh.run("set output_format=xml");
    sh.assert_has(&out, "[ERROR]");
    let out = sh.run("show_backup_servers");
    sh.assert_has(&out, "(2 rows)");
}

// ---- 8. history ------------------------------------------------------------------------------------------

#[test]
fn history_is_kept_across_sessions() {
    let env = Env::new();
    let mut sh = shell(&env);
    sh.run("show_pgsql_nodes");
    sh.run("set output_format=csv");
    sh.keys(&["C-d"]);
    sh.expect("Done, thank you for using pgbackman.");
    assert_eq!(sh.exit_status(), 0);
    drop(sh);
    let file = env.home.path().join(".local/share/pgbackman/history");
    let saved = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("no history file {}: {e}", file.display()));
    assert!(
        saved.contains("show_pgsql_nodes") && saved.contains("set output_format=csv"),
        "{saved}"
    );

    // A new shell with the same HOME: Up recalls the previous session's commands, newest first.
    let mut sh = shell(&env);
    sh.keys(&["Up"]);
    sh.expect_cursor_line(&format!("{PROMPT} set output_format=csv"), false);
    sh.keys(&["Up"]);
    sh.expect_cursor_line(&format!("{PROMPT} show_pgsql_nodes"), false);
    sh.keys(&["Enter"]);
    let out = sh.expect_prompt();
    // The output format of the old session is not carried over: a table.
    sh.assert_has(&out, "(0 rows)");
    // show_history lists this session's commands only.
    let out = sh.run("show_history");
    assert_eq!(
        out.trim_end(),
        "   1  show_pgsql_nodes\n   2  show_history",
        "show_history printed:\n{out}"
    );
    sh.line("quit");
    sh.expect("Done, thank you for using pgbackman.");
    assert_eq!(sh.exit_status(), 0);
    // The file gained this session's lines, without repeating the old ones.
    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(saved.contains("show_history"), "{saved}");
    assert_eq!(saved.matches("set output_format=csv").count(), 1, "{saved}");
}

// ---- 9. errors ----------------------------------------------------------------------------------------------

#[test]
fn errors_do_not_end_the_shell() {
    let env = Env::new();
    let mut sh = shell(&env);
    let out = sh.run("frobnicate");
    sh.assert_has(&out, "[ERROR] unknown command: frobnicate");
    let out = sh.run("show_backup_server");
    sh.assert_has(
        &out,
        "[ERROR] unknown command: show_backup_server; did you mean show_backup_servers",
    );
    let out = sh.run("delete_backup_server 1 2");
    sh.assert_has(&out, "[ERROR]");
    sh.assert_has(&out, "Usage: delete_backup_server");
    let out = sh.run("register_backup_server \"bs1 example.org");
    sh.assert_has(&out, "[ERROR] unbalanced quotes");
    let out = sh.run("delete_backup_server 99");
    sh.assert_has(&out, "[ERROR]");
    sh.assert_has(&out, "not registered");
    // A bad answer is refused at once, before the next question.
    sh.line("register_backup_server");
    sh.expect_question("Hostname:");
    sh.line("bad host");
    let out = sh.expect_prompt();
    sh.assert_has(&out, "[ERROR] hostname \"bad host\" is not valid");
    // Still alive and working.
    let out = sh.run("register_backup_server bs1 example.org ok");
    sh.assert_has(
        &out,
        "[DONE] Backup server bs1.example.org registered with SrvID",
    );
    assert_eq!(
        env.sql("select string_agg(fqdn, ',') from backup_server"),
        "bs1.example.org"
    );
    sh.line("\\q");
    sh.expect("Done, thank you for using pgbackman.");
    assert_eq!(sh.exit_status(), 0);
}

#[test]
fn a_shell_that_cannot_reach_its_catalog_says_so_and_fails() {
    let env = Env::new();
    let mut sh = Shell::start_with(&env, &env.catalog.conninfo("nosuch"));
    let out = sh.expect("[ERROR]");
    sh.assert_has(&out, "nosuch");
    assert_eq!(sh.exit_status(), 1);
    sh.assert_lacks(&sh.lines().join("\n"), PROMPT);
}

// ---- restores ------------------------------------------------------------------------------------

#[test]
fn register_restore_definition_walks_pgbackmans_decision_flow() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let n = env.start_node("127.0.0.2", "a");
    n.create_database("shop");
    n.psql("postgres", "create role app");
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    env.sql(
        "insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, dbname, backup_code, started, finished,
                                     execution_status, execution_method, backup_dir, role_list, pg_dump_release)
         values (1, 1, 1, 'shop', 'FULL', now(), now(), 'SUCCEEDED', 'MANUAL', '/nonexistent/set', '{app,newrole,postgres}', '15')",
    );
    let mut sh = shell(&env);
    let start = |sh: &mut Shell| {
        sh.line("register_restore_definition");
        sh.expect_question(
            "AT time (now, YYYY-MM-DD HH:MM in the display zone, or with a zone) [now]:",
        );
        sh.keys(&["Enter"]);
        sh.expect_question("BckID:");
        sh.line("1");
        sh.expect_question("Target NodeID | FQDN:");
        sh.line("127.0.0.2");
        sh.expect_question("Target DBname [shop]:");
        sh.keys(&["Enter"]);
        sh.expect_question("Extra pg_restore parameters []:");
        sh.keys(&["Enter"]);
        sh.expect_question("Database \"shop\" exists on 127.0.0.2. Rename it? (yes/no):");
    };
    // Not renaming the existing database stops the restore.
    start(&mut sh);
    sh.line("no");
    let out = sh.expect_prompt();
    sh.assert_has(&out, "[ABORTED]");
    // Renaming it: the new name must not exist either; then each existing role is a question.
    start(&mut sh);
    sh.line("yes");
    sh.expect("New name of the existing database [shop_");
    sh.line("shop");
    sh.expect("Database \"shop\" exists too: choose another name.");
    sh.line("shop_old");
    sh.expect_question(
        "Role \"app\" exists on 127.0.0.2. Use the existing role (left as it is)? (yes/no):",
    );
    sh.line("yes");
    let out = sh.expect_question("Register this restore? (yes/no):");
    sh.assert_has(&out, "newrole");
    sh.assert_has(&out, "shop_old");
    assert_eq!(env.sql("select count(*) from restore_definition"), "0");
    sh.line("yes");
    let out = sh.expect_prompt();
    sh.assert_has(&out, "[DONE] Restore definition RestoreDef 1 registered");
    assert_eq!(
        env.sql("select concat_ws(' ', target_dbname, renamed_dbname, array_to_string(roles_to_restore, ',')) from restore_definition"),
        "shop shop_old newrole"
    );
}

// ---- issue 14: completion by position, shortcuts, listings without questions, display zone -------

#[test]
fn tab_completes_the_argument_at_its_position() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    for h in ["pg01", "pg02"] {
        env.cmd(&format!(
            "register_pgsql_node {h} example.org 5432 postgres STOPPED \"\""
        ))
        .ok();
    }
    // A definition without a reachable node: straight into the catalog.
    env.sql("insert into backup_definition (backup_server_id, pgsql_node_id, dbname) values (1, 1, 'billing')");
    let mut sh = shell(&env);
    // The server's place offers servers, the node's place nodes: common prefix, then the list.
    sh.type_text("register_backup_definition bs");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(
        &format!("{PROMPT} register_backup_definition bs1.example.org"),
        false,
    );
    sh.type_text(" pg");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(
        &format!("{PROMPT} register_backup_definition bs1.example.org pg0"),
        false,
    );
    sh.keys(&["Tab"]);
    let listed = sh.expect("pg02.example.org");
    sh.assert_has(&listed, "pg01.example.org");
    sh.assert_lacks(&listed, "bs1.example.org  ");
    sh.type_text("2");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(
        &format!("{PROMPT} register_backup_definition bs1.example.org pg02.example.org"),
        false,
    );
    // The database's place: the special selections and known databases.
    sh.type_text(" #all");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(
        &format!(
            "{PROMPT} register_backup_definition bs1.example.org pg02.example.org #all_databases#"
        ),
        false,
    );
    sh.keys(&["C-c"]);
    sh.expect_prompt();
    // A DefID's place offers DefIDs (not NodeIDs 1 and 2), a flag's place flags, a flag's value
    // its values.
    sh.type_text("update_backup_definition ");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(&format!("{PROMPT} update_backup_definition 1"), false);
    sh.type_text(" --form");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(
        &format!("{PROMPT} update_backup_definition 1 --format"),
        false,
    );
    sh.type_text(" d");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(
        &format!("{PROMPT} update_backup_definition 1 --format directory"),
        false,
    );
    sh.keys(&["C-c"]);
    sh.expect_prompt();
    // A code at the code's place, typed in lower case.
    sh.type_text("register_backup_definition 1 1 billing \"\" 0 3 * * * sch");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(
        &format!("{PROMPT} register_backup_definition 1 1 billing \"\" 0 3 * * * SCHEMA"),
        false,
    );
    sh.keys(&["C-c"]);
    sh.expect_prompt();
    // At the questions of a bare command: the DefID question offers DefIDs, and yes/no.
    sh.line("delete_backup_definition_id");
    sh.expect_question("DefID:");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line("DefID: 1", false);
    sh.keys(&["Enter"]);
    sh.expect_question("Force deletion of its backups too (yes/no) [no]:");
    sh.type_text("y");
    sh.keys(&["Tab"]);
    sh.expect_cursor_line(
        "Force deletion of its backups too (yes/no) [no]: yes",
        false,
    );
    sh.keys(&["C-c"]);
    let out = sh.expect_prompt();
    sh.assert_has(&out, "[ABORTED]");
    assert_eq!(
        env.sql("select job_status from backup_definition where def_id = 1"),
        "ACTIVE"
    );
}

#[test]
fn shortcuts_and_listings_without_questions() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let mut sh = shell(&env);
    let out = sh.run("\\h");
    sh.assert_has(
        &out,
        "Commands (help <command> for arguments and examples):",
    );
    let out = sh.run("help shortcuts");
    sh.assert_has(&out, "\\q, quit, exit");
    let out = sh.run("help support");
    sh.assert_has(&out, "When reporting a problem");
    // Listings whose arguments are all filters run with their defaults, asking nothing.
    let out = sh.run("show_backup_catalog");
    sh.assert_has(&out, "(0 rows)");
    sh.assert_lacks(&out, "SrvID | FQDN | all [all]:");
    let out = sh.run("show_jobs_queue");
    sh.assert_has(&out, "(0 rows)");
    let out = sh.run("show_backup_server_config");
    // (the default is this host, not registered here)
    sh.assert_lacks(&out, "SrvID | FQDN [");
    // A listing that cannot run without its argument still asks for it.
    sh.line("show_pgsql_node_config");
    sh.expect_question("NodeID | FQDN:");
    sh.keys(&["C-c"]);
    sh.expect_prompt();
    // The display zone: refused when not an IANA name, then used by every listing.
    let out = sh.run("set timezone=Mars/Olympus");
    sh.assert_has(&out, "is not an IANA time zone name");
    let out = sh.run("set timezone=Asia/Kolkata");
    sh.assert_has(&out, "[DONE] timezone = Asia/Kolkata");
    let out = sh.run("show_audit_log 1");
    sh.assert_has(&out, "+05:30");
    // Typed EOF leaves like Ctrl-D.
    sh.line("EOF");
    sh.expect("Done, thank you for using pgbackman.");
    assert_eq!(sh.exit_status(), 0);
}
