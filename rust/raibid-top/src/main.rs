use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cfg = raibid_top::Config::parse();
    match raibid_top::run(cfg).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raibid-top: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
