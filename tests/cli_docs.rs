//! `twinlun completions` and `twinlun man`: generated from the CLI definition, they
//! must be valid for their shell or for groff and know the real commands.

mod common;

use std::process::Command;

use common::{bin, require_tool, run_ok};

fn twinlun(args: &[&str]) -> String {
    run_ok(bin(), args)
}

#[test]
fn bash_completion_parses_and_completes_real_subcommands() {
    require_tool("bash");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("twinlun.bash");
    std::fs::write(&script, twinlun(&["completions", "bash"])).unwrap();
    run_ok("bash", &["-n", script.to_str().unwrap()]);
    // What bash would offer at `twinlun ctl rep<TAB>` and `twinlun ctl replication c<TAB>`.
    let complete =
        |line: &str| {
            let words: Vec<&str> = line.split(' ').collect();
            let probe =
                format!(
            "source {script}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; \
             COMP_POINT=${{#COMP_LINE}}; _twinlun twinlun '{cur}' '{prev}'; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script = script.display(),
            words = words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
            cword = words.len() - 1,
            cur = words[words.len() - 1],
            prev = words[words.len() - 2],
        );
            let mut v: Vec<String> = run_ok("bash", &["-c", &probe])
                .split_whitespace()
                .map(str::to_string)
                .collect();
            v.sort();
            v
        };
    assert_eq!(complete("twinlun ctl rep"), ["replicate", "replication"]);
    assert_eq!(complete("twinlun ctl replication c"), ["create"]);
    assert_eq!(complete("twinlun ctl config e"), ["export"]);
    assert!(complete("twinlun ctl config export --w").contains(&"--with-secrets".to_string()));
}

#[test]
fn zsh_and_fish_scripts_are_generated_for_the_real_commands() {
    require_tool("zsh");
    let dir = tempfile::tempdir().unwrap();
    let zsh = dir.path().join("_twinlun");
    std::fs::write(&zsh, twinlun(&["completions", "zsh"])).unwrap();
    run_ok("zsh", &["-n", zsh.to_str().unwrap()]);
    let fish = twinlun(&["completions", "fish"]);
    assert!(
        fish.contains("complete -c twinlun") && fish.contains("with-secrets"),
        "{fish}"
    );
    // An unknown shell is a usage error.
    let o = Command::new(bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// groff's warnings for a page (every category), or its failure.
fn groff_warnings(page: &std::path::Path) -> String {
    let o = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(page)
        .output()
        .expect("run groff");
    assert!(o.status.success(), "groff {}: {o:?}", page.display());
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn man_pages_render_without_warnings() {
    require_tool("groff");
    require_tool("man");
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("twinlun.1");
    std::fs::write(&main, twinlun(&["man"])).unwrap();
    assert_eq!(groff_warnings(&main), "");
    let text = run_ok("man", &["-l", main.to_str().unwrap()]);
    for cmd in ["serve", "ctl", "completions", "man"] {
        assert!(
            text.contains(&format!("twinlun-{cmd}(1)")),
            "{cmd} in\n{text}"
        );
    }

    let man1 = dir.path().join("man1");
    twinlun(&["man", "--dir", man1.to_str().unwrap()]);
    let mut pages: Vec<_> = std::fs::read_dir(&man1)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    for page in &pages {
        assert_eq!(groff_warnings(page), "", "{}", page.display());
    }
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "twinlun.1",
        "twinlun-serve.1",
        "twinlun-ctl.1",
        "twinlun-ctl-config-export.1",
        "twinlun-ctl-replication-create.1",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let export = run_ok(
        "man",
        &[
            "-l",
            man1.join("twinlun-ctl-config-export.1").to_str().unwrap(),
        ],
    );
    assert!(export.contains("--with-secrets"), "{export}");
}
