//! `switchyard completion SHELL` and `switchyard man`: what shells and `man` need, generated from
//! the command line's own definition so they never drift from it.

use std::io::Write;
use std::path::PathBuf;

use clap::CommandFactory;

use super::Cli;

/// Options of `switchyard completion`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Load it in the running shell, e.g.\n  \
    bash: source <(switchyard completion bash)\n  \
    zsh:  source <(switchyard completion zsh)\n  \
    fish: switchyard completion fish | source\n\
    or write it where the shell loads completions from at start.")]
pub struct CompletionArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Options of `switchyard man`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write one page per command (switchyard.1, switchyard-switch.1, …) into this folder instead
    /// of printing switchyard(1).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// The completion script for `args.shell`, written to `out`.
pub fn completion(args: &CompletionArgs, out: &mut dyn Write) {
    clap_complete::generate(args.shell, &mut Cli::command(), "switchyard", out);
}

/// switchyard(1) to `out`, or every command's page into `args.out_dir`.
pub fn man(args: &ManArgs, out: &mut dyn Write) -> std::io::Result<()> {
    let command = Cli::command();
    match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(command, dir)
        }
        None => clap_mangen::Man::new(command).render(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut script = Vec::new();
            completion(&CompletionArgs { shell }, &mut script);
            let script = String::from_utf8(script).expect("utf-8");
            for word in ["switchyard", "provider-conformance", "completion", "claim-lease"] {
                assert!(script.contains(word), "{shell:?} script lacks {word}");
            }
        }
    }

    #[test]
    fn the_man_page_describes_the_commands() {
        let mut page = Vec::new();
        man(&ManArgs { out_dir: None }, &mut page).expect("render");
        let page = String::from_utf8(page).expect("utf-8");
        assert!(page.contains(".TH switchyard 1") && page.contains(".SH SUBCOMMANDS"), "{page}");
        assert!(page.contains("switchyard\\-provider\\-conformance(1)"), "{page}");

        let dir = tempfile::tempdir().expect("temp dir");
        man(&ManArgs { out_dir: Some(dir.path().into()) }, &mut Vec::new()).expect("write pages");
        for page in ["switchyard.1", "switchyard-switch.1", "switchyard-controller.1", "switchyard-completion.1"] {
            assert!(dir.path().join(page).is_file(), "{page} not written");
        }
    }
}
