use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // kube and reqwest both use rustls; the process-level provider must be chosen
    // before either builds a client, or rustls panics at the first TLS handshake.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // clap exits 2 on a usage error, and 2 is `guard deploy`'s "reverted":
    // a mistyped flag in CI must not read as a revert. Help and version stay 0.
    let cli = match guard::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(usage) => {
            let _ = usage.print();
            return match usage.exit_code() {
                0 => std::process::ExitCode::SUCCESS,
                _ => std::process::ExitCode::from(1),
            };
        }
    };
    match guard::cli::run(cli).await {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // A reader that stopped reading (`guard bench detection --json | head`)
        // is not an error of guard's: stop quietly, as Unix tools do.
        Err(err)
            if err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("guard: error: {}", guard::cli::explain(&err));
            std::process::ExitCode::from(1)
        }
    }
}
