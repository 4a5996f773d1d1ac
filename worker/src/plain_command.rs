//! Runs a session's command line without `/bin/sh` when it is plain words
//! (a program and its arguments) that the shell would pass on unchanged,
//! saving one process start per command; anything else goes through
//! `/bin/sh -c` as before.
//!
//! "Unchanged" is decided conservatively: only letters, digits, blanks
//! (space, tab) and `_-./,:=@%+` may appear, so there is no quoting,
//! expansion, globbing, redirection, comment or command separator to
//! interpret; the first word may hold no `=` (an assignment) and may not
//! be a reserved word or a builtin of the shell (which would not run the
//! program of that name); `PATH` must be set (the shell's default differs
//! from the C library's).
//!
//! The shell's side effects are reproduced: it exports `PWD` (kept from the
//! environment when it names the working folder, else the physical path),
//! and it finds the program on `PATH` the way `execvp` does. When the
//! program cannot be started at all (not found, not executable), the
//! command is handed to `/bin/sh -c` after all, so the exit status (127,
//! 126) and the message (`sh: 1: NAME: not found`) are the shell's own.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

/// Characters a plain command line may hold besides ASCII letters and digits.
const PLAIN: &[u8] = b" \t_-./,:=@%+";

/// Reserved words and builtins of `dash` (Debian's `/bin/sh`) and of POSIX
/// shells: a command starting with one of them is the shell's to run.
const SHELL_WORDS: &[&str] = &[
    // Reserved words.
    "case", "do", "done", "elif", "else", "esac", "fi", "for", "function", "if", "in", "select",
    "then", "time", "until", "while", // Builtins.
    ".", ":", "alias", "bg", "break", "builtin", "cd", "chdir", "command", "continue", "declare",
    "echo", "eval", "exec", "exit", "export", "false", "fc", "fg", "getopts", "hash", "jobs",
    "kill", "let", "local", "printf", "pwd", "read", "readonly", "return", "set", "shift",
    "source", "test", "times", "trap", "true", "type", "typeset", "ulimit", "umask", "unalias",
    "unset", "wait",
];

/// The words of `command` when it is plain (see the module's doc), `None`
/// when it needs the shell.
pub fn plain_words(command: &str) -> Option<Vec<&str>> {
    if !command
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || PLAIN.contains(&b))
    {
        return None;
    }
    let words: Vec<&str> = command
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    let program = *words.first()?;
    if program.contains('=') || SHELL_WORDS.contains(&program) {
        return None;
    }
    Some(words)
}

/// The command that runs `command` as `/bin/sh -c` would: the program
/// itself when the line is plain and the environment allows, else the
/// shell. `env` is the environment the command inherits.
pub fn command_for(command: &str, env: impl Fn(&str) -> Option<OsString>) -> (Command, bool) {
    if let (Some(words), Some(_), Some(pwd)) = (plain_words(command), env("PATH"), shell_pwd(&env))
    {
        let mut direct = Command::new(words[0]);
        direct.args(&words[1..]).env("PWD", pwd);
        return (direct, true);
    }
    (shell(command), false)
}

/// `/bin/sh -c command`.
pub fn shell(command: &str) -> Command {
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c").arg(command);
    sh
}

/// The `PWD` the shell exports: the inherited one when it is absolute and
/// names the working folder, else the physical path of the working folder.
fn shell_pwd(env: &impl Fn(&str) -> Option<OsString>) -> Option<OsString> {
    let here = std::fs::metadata(".").ok()?;
    if let Some(pwd) = env("PWD").filter(|p| p.as_encoded_bytes().starts_with(b"/")) {
        if let Ok(there) = std::fs::metadata(&pwd) {
            if (there.dev(), there.ino()) == (here.dev(), here.ino()) {
                return Some(pwd);
            }
        }
    }
    std::env::current_dir().ok().map(OsString::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_words_skip_the_shell() {
        assert_eq!(plain_words("sleep 1"), Some(vec!["sleep", "1"]));
        assert_eq!(
            plain_words("  ls\t-la   /tmp "),
            Some(vec!["ls", "-la", "/tmp"])
        );
        assert_eq!(
            plain_words("./run.sh --out=pg/a.sql x@y 5% a+b c,d:e"),
            Some(vec![
                "./run.sh",
                "--out=pg/a.sql",
                "x@y",
                "5%",
                "a+b",
                "c,d:e"
            ])
        );
        for shelly in [
            "",
            "   ",
            "echo hi",
            "true",
            "false",
            "printf x",
            "cd /",
            "exit 3",
            "test -f x",
            "FOO=1 env",
            "a && b",
            "a; b",
            "a | b",
            "a > f",
            "a < f",
            "$HOME/x",
            "`id`",
            "'quoted'",
            "\"quoted\"",
            "a\\ b",
            "ls *",
            "ls ?",
            "ls [ab]",
            "~/bin/x",
            "a # c",
            "(a)",
            "{ a; }",
            "! a",
            "a\nb",
            "a &",
            "if",
            "caf\u{e9}",
        ] {
            assert_eq!(plain_words(shelly), None, "{shelly:?} needs the shell");
        }
    }

    /// What a command did: its status, stdout (lines sorted for `env`,
    /// whose order the shell does not keep) and stderr; `None` when it
    /// could not start.
    fn outcome(mut command: Command, sort: bool) -> Option<(Option<i32>, String, String)> {
        let output = command.output().ok()?;
        let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if sort {
            let mut lines: Vec<&str> = stdout.lines().collect();
            lines.sort();
            stdout = lines.join("\n");
        }
        Some((
            output.status.code(),
            stdout,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Runs `line` directly (falling back to the shell when the program
    /// cannot start, as the leader does) and through `/bin/sh -c`, in `dir`
    /// (the test's own folder: `command_for` reads the process's).
    fn both(
        line: &str,
        dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> [(Option<i32>, String, String); 2] {
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        };
        // The environment is the table's, plus what `command_for` set.
        let prepared = |mut command: Command| {
            let set: Vec<(OsString, Option<OsString>)> = command
                .get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
                .collect();
            command
                .current_dir(dir)
                .env_clear()
                .envs(env.iter().copied());
            for (key, value) in set.into_iter().filter_map(|(k, v)| Some((k, v?))) {
                command.env(key, value);
            }
            command
        };
        let sort = line.contains("env");
        let (direct, is_direct) = command_for(line, lookup);
        let direct = outcome(prepared(direct), sort).unwrap_or_else(|| {
            assert!(is_direct, "{line:?}: the shell itself failed to start");
            outcome(prepared(shell(line)), sort).expect("sh runs")
        });
        let sh = outcome(prepared(shell(line)), sort).expect("sh runs");
        [direct, sh]
    }

    #[test]
    fn a_plain_command_behaves_as_under_sh() {
        let here = std::env::current_dir().expect("cwd");
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path();
        std::fs::write(dir.join("not-executable"), "echo no\n").expect("write");
        std::fs::create_dir(dir.join("folder")).expect("folder");
        // A script without `#!`: the shell runs it, as execvp does.
        let script = dir.join("bare-script");
        std::fs::write(&script, "echo from a bare script \"$@\"\nexit 7\n").expect("write");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let here_text = here.display().to_string();
        let path = format!("{}:/usr/bin:/bin", dir.display());
        let env = [
            ("PATH", path.as_str()),
            ("PWD", here_text.as_str()),
            ("LANG", "C"),
        ];
        let folder = format!("{}/folder", dir.display());
        let missing = format!("{}/no-such-file", dir.display());
        let table = [
            "ls -d /",
            "  ls\t-d   / /usr ",
            "cat /nonexistent",
            "env",
            "expr 6 * 7",
            "expr 6 + 7",
            "no-such-command --flag",
            &missing,
            "/nonexistent/bin/x",
            "not-executable",
            &folder,
            "bare-script a b",
            "sh -c exit",
            "uname -s",
        ];
        for line in table {
            let [direct, sh] = both(line, &here, &env);
            assert_eq!(direct, sh, "{line:?}: direct, then /bin/sh -c");
        }
        // `PWD` is the physical folder when the inherited one is elsewhere.
        let elsewhere = [("PATH", "/usr/bin:/bin"), ("PWD", "/")];
        let [direct, sh] = both("env", &here, &elsewhere);
        assert_eq!(direct, sh);
        assert!(plain_words("env").is_some() && plain_words("ls -d /").is_some());
        // Without PATH the shell's default search path applies: no shortcut.
        assert!(!command_for("ls", |_| None).1);
        assert!(command_for("ls", |k| (k == "PATH").then(|| "/bin".into())).1);
    }
}
