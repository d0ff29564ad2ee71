//! The worker's command-line clients: `forge submit` (with `--watch`, its events as they come, JSON
//! lines with `--json` or a progress bar on a terminal), `forge jobs` and `forge cancel`.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::{json, Value};

use crate::{bad_input, Error, Result};

/// A connection to a server.
pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Self> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            bad_input!(
                "no forge server answers on {} ({e}); start one with `forge serve --socket {0}`",
                socket.display()
            )
        })?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| Error::io(socket, e))?);
        Ok(Client { stream, reader })
    }

    /// Sends a request; returns its reply's result, or the server's refusal as an error.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let request = json!({"id": 1, "method": method, "params": params});
        writeln!(self.stream, "{request}")
            .map_err(|e| bad_input!("the server closed the connection: {e}"))?;
        let reply = self.receive()?.ok_or_else(|| bad_input!("the server closed the connection"))?;
        match (reply.get("result"), reply.get("error")) {
            (Some(result), _) => Ok(result.clone()),
            (_, Some(error)) => {
                let message = error["message"].as_str().unwrap_or("refused").to_string();
                Err(if error["class"] == 2 { Error::BadInput(message) } else { Error::Strategy(message) })
            }
            _ => Err(bad_input!("the server sent a reply without a result: {reply}")),
        }
    }

    /// The next line the server sends, parsed; None at the end of the connection.
    pub fn receive(&mut self) -> Result<Option<Value>> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => {
                serde_json::from_str(&line).map(Some).map_err(|e| bad_input!("the server sent {line:?}: {e}"))
            }
            Err(e) => Err(bad_input!("reading from the server: {e}")),
        }
    }
}

/// Prints a job's events until it ends; the result is how it ended, as the CLI's error when it did
/// not finish.
pub fn watch(client: &mut Client, json: bool, quiet: bool) -> Result<()> {
    let bar = crate::progress::bar(0, "steps", quiet || json);
    while let Some(event) = client.receive()? {
        let kind = event["event"].as_str().unwrap_or("").to_string();
        if json {
            println!("{event}");
        } else if kind == "progress" && event.get("step").is_some() {
            bar.set_length(event["steps"].as_u64().unwrap_or(0));
            bar.set_position(event["step"].as_u64().unwrap_or(0));
            bar.set_message(format!(
                "cycle {} train, loss {:.4}",
                event["cycle"],
                event["loss"].as_f64().unwrap_or(f64::NAN)
            ));
        } else if kind == "progress" {
            bar.println(format!(
                "{} {}: cycle {}",
                event["job"].as_str().unwrap_or(""),
                event["phase"].as_str().unwrap_or(""),
                event["cycle"]
            ));
        } else if kind != "done" {
            bar.println(format!("{} {kind} {}", event["job"].as_str().unwrap_or(""), event));
        }
        match kind.as_str() {
            "done" => {
                bar.finish_and_clear();
                if !json {
                    println!("{}", event["result"]);
                }
                return Ok(());
            }
            "error" => {
                let message = event["message"].as_str().unwrap_or("the job failed").to_string();
                return Err(if event["class"] == 2 {
                    Error::BadInput(message)
                } else {
                    Error::Strategy(message)
                });
            }
            "cancelled" => {
                return Err(Error::Interrupted(format!("; {}", event["resume"].as_str().unwrap_or(""))))
            }
            _ => {}
        }
    }
    Err(bad_input!(
        "the server closed the connection before the job ended; `forge jobs` shows where it stands"
    ))
}
