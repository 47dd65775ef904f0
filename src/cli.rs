//! The `switchyard` command line: one binary, one subcommand per entry point.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version,
    about = "Places Workspaces on compute providers and switches them safely"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print every CustomResourceDefinition as YAML.
    Crd,
    /// Run everything locally: a control plane, simulated providers, the controller, samples.
    Dev(crate::dev::DevArgs),
}

pub async fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Crd => match crate::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard crd: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Dev(args) => match crate::dev::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard dev: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
