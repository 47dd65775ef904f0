use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    switchyard::cli::main(switchyard::cli::Cli::parse()).await
}
