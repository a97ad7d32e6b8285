//! raibid-top: the terminal UI of raibid-ci. It talks only to the dispatcher's API (REST for loads and
//! actions, Server-Sent Events for live changes), never to Redis.
//!
//! Shape (the ratatui component template): the network runs on its own tasks ([`net`]) and reports
//! through a channel; keys become [`action::Action`]s through per-view binding tables; [`app::App`]
//! is the state and its only mutator; [`ui`] renders the state and nothing else.

pub mod action;
pub mod app;
pub mod net;
pub mod schedules;
pub mod ui;

use action::{Action, Command};
use anyhow::Context;
use clap::Parser;
use crossterm::event::{Event as TermEvent, EventStream, KeyEventKind};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use crossterm::ExecutableCommand;
use futures::StreamExt;
use raibid_core::contract::env;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::path::PathBuf;
use std::time::Duration;

/// raibid-top — watch and steer raibid-ci from a terminal.
///
/// Shows queue depth and lag, agents, jobs, step timelines and live logs; cancel, retry and submit
/// jobs. Talks to the dispatcher's API only (live over Server-Sent Events). Press ? for the keys.
#[derive(Debug, Clone, Parser)]
#[command(name = "raibid-top", version, about, long_about = None)]
pub struct Config {
    /// Base URL of the dispatcher.
    #[arg(long, env = env::URL, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Bearer token of the API.
    #[arg(long, env = env::API_TOKEN, hide_env_values = true)]
    pub api_token: Option<String>,

    /// File holding the API token; used when --api-token is not set.
    #[arg(long, env = env::API_TOKEN_FILE)]
    pub api_token_file: Option<PathBuf>,

    /// Most jobs loaded at start (newest first; later ones arrive live).
    #[arg(long, default_value_t = 10_000)]
    pub max_jobs: usize,
}

impl Config {
    /// The token from the flag, the environment or the file.
    pub fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = self.api_token.as_ref().filter(|t| !t.is_empty()) {
            return Ok(t.clone());
        }
        match &self.api_token_file {
            Some(f) => {
                let t = std::fs::read_to_string(f)
                    .with_context(|| format!("reading the API token from {}", f.display()))?;
                let t = t.trim().to_string();
                anyhow::ensure!(!t.is_empty(), "the API token file {} is empty", f.display());
                Ok(t)
            }
            None => anyhow::bail!(
                "no API token: set {} or {} (./scripts/dev.sh env prints them for the local stack)",
                env::API_TOKEN,
                env::API_TOKEN_FILE
            ),
        }
    }
}

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = std::io::stdout().execute(LeaveAlternateScreen);
    let _ = std::io::stdout().execute(crossterm::cursor::Show);
}

/// Run the UI until the user quits or a signal arrives; the terminal is restored on every path out,
/// a panic included.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let token = cfg.token()?;
    let client = net::Client::new(&cfg.url, &token)?;
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        default_hook(info);
    }));
    enable_raw_mode().context("the terminal cannot enter raw mode")?;
    std::io::stdout().execute(EnterAlternateScreen)?;
    let result = ui_loop(cfg, client).await;
    restore_terminal();
    result
}

async fn ui_loop(cfg: Config, client: net::Client) -> anyhow::Result<()> {
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    terminal.clear()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Action>();
    let cmd = net::spawn(client, cfg.max_jobs, tx.clone());
    // Signals end the program the same way `q` does.
    {
        use tokio::signal::unix::{signal, SignalKind};
        let tx = tx.clone();
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = hup.recv() => {}
                _ = int.recv() => {}
            }
            let _ = tx.send(Action::Quit);
        });
    }
    let mut app = app::App::new(chrono::Utc::now());
    app.endpoint = cfg.url.clone();
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        terminal.draw(|f| ui::draw(f, &mut app))?;
        let mut out: Vec<Command> = Vec::new();
        tokio::select! {
            ev = keys.next() => match ev {
                Some(Ok(TermEvent::Key(k))) if k.kind != KeyEventKind::Release => {
                    out.extend(app.handle_key(k));
                }
                Some(Ok(TermEvent::Resize(w, h))) => out.extend(app.update(Action::Resize(w, h))),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("reading the terminal"),
                None => break,
            },
            a = rx.recv() => {
                let Some(a) = a else { break };
                out.extend(app.update(a));
                // Apply everything already waiting before the next frame.
                let mut n = 0;
                while let Ok(a) = rx.try_recv() {
                    out.extend(app.update(a));
                    n += 1;
                    if n > 20_000 {
                        break;
                    }
                }
            }
            _ = tick.tick() => out.extend(app.update(Action::Tick(chrono::Utc::now()))),
        }
        for c in out {
            let _ = cmd.send(c);
        }
        if app.quit {
            break;
        }
    }
    Ok(())
}
