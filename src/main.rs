#[tokio::main]
async fn main() -> std::process::ExitCode {
    switchyard::cli::main(switchyard::cli::parse()).await
}
