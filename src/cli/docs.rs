//! `twinlun completions SHELL` and `twinlun man`: generated from the clap definition
//! (`clap_complete`, `clap_mangen`), so they cannot list a flag that does not exist.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for: source the output from its startup file, or save it
    /// where it loads completions (bash: /usr/share/bash-completion/completions/twinlun).
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write one page per command into DIR (twinlun.1, twinlun-serve.1,
    /// twinlun-ctl-volume-create.1, ...) instead of printing twinlun(1).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script for `shell`.
pub fn completions(args: CompletionsArgs, mut cmd: clap::Command) -> ExitCode {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "twinlun", &mut script);
    print_all(&script)
}

/// Prints twinlun(1), or writes a page per command into `--dir`.
pub fn man(args: ManArgs, cmd: clap::Command) -> ExitCode {
    match args.dir {
        None => {
            let mut page = Vec::new();
            if let Err(e) = clap_mangen::Man::new(cmd).render(&mut page) {
                eprintln!("twinlun man: {e}");
                return ExitCode::FAILURE;
            }
            print_all(&page)
        }
        Some(dir) => match write_pages(&dir, cmd) {
            Ok(n) => {
                println!("twinlun man: wrote {n} pages to {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("twinlun man: {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
    }
}

/// One page per command and subcommand, named by its path (`twinlun-ctl-volume.1`,
/// as clap names a subcommand for display); returns how many pages the dir holds.
fn write_pages(dir: &Path, cmd: clap::Command) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cmd, dir)?;
    count_pages(dir)
}

fn count_pages(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("twinlun") && name.ends_with(".1") {
            n += 1;
        }
    }
    Ok(n)
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print_all(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twinlun: {e}");
            ExitCode::FAILURE
        }
    }
}
