//! A tiny in-process stand-in for Redis, reachable by the operator process on 127.0.0.1, so the
//! QWorker scenario can make a broker reachable without running one. It speaks RESP2 and knows
//! only what the operator's Redis adapter sends: the connection set-up (`AUTH`, `SELECT`,
//! `CLIENT SETINFO`), `PING`, `LLEN` and `LMOVE`. Lists are counters of placeholder tasks.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    lists: HashMap<String, u64>,
    commands: Vec<Vec<String>>,
}

/// The fake server; stops accepting when dropped.
pub struct FakeRedis {
    /// The port on 127.0.0.1.
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FakeRedis {
    /// Listens on a free port of 127.0.0.1, serving each connection on its own thread.
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state: Arc<Mutex<State>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, halt) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    let st = st.clone();
                    std::thread::spawn(move || {
                        let _ = serve(stream, &st);
                    });
                }
            }
        });
        Ok(Self { port, state, stop })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the length of list `key`.
    pub fn set_len(&self, key: &str, len: u64) {
        self.state().lists.insert(key.to_string(), len);
    }

    /// The length of list `key`.
    pub fn len(&self, key: &str) -> u64 {
        self.state().lists.get(key).copied().unwrap_or(0)
    }

    /// Whether a command with these leading arguments (command name upper-case) was received.
    pub fn received(&self, prefix: &[&str]) -> bool {
        self.state()
            .commands
            .iter()
            .any(|c| c.len() >= prefix.len() && c.iter().zip(prefix).all(|(a, b)| a == b))
    }

    /// How many commands were received.
    pub fn command_count(&self) -> usize {
        self.state().commands.len()
    }
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(args) = read_command(&mut reader)? {
        let reply = respond(args, state);
        writer.write_all(&reply)?;
        writer.flush()?;
    }
    Ok(())
}

fn invalid(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_string())
}

/// One command: a RESP array of bulk strings (or an inline command). `None` at end of stream.
fn read_command(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<String>>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let line = line.trim_end();
    let Some(count) = line.strip_prefix('*') else {
        return Ok(Some(line.split_whitespace().map(str::to_string).collect()));
    };
    let count: usize = count.parse().map_err(|_| invalid("bad array length"))?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let len: usize = header
            .trim_end()
            .strip_prefix('$')
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| invalid("bad bulk string header"))?;
        let mut data = vec![0; len + 2];
        reader.read_exact(&mut data)?;
        data.truncate(len);
        args.push(String::from_utf8_lossy(&data).into_owned());
    }
    Ok(Some(args))
}

fn respond(mut args: Vec<String>, state: &Mutex<State>) -> Vec<u8> {
    let Some(first) = args.first_mut() else {
        return b"-ERR empty command\r\n".to_vec();
    };
    *first = first.to_ascii_uppercase();
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    st.commands.push(args.clone());
    match args[0].as_str() {
        "AUTH" | "SELECT" | "CLIENT" => b"+OK\r\n".to_vec(),
        "PING" => b"+PONG\r\n".to_vec(),
        "LLEN" if args.len() == 2 => {
            format!(":{}\r\n", st.lists.get(&args[1]).copied().unwrap_or(0)).into_bytes()
        }
        "LMOVE" if args.len() >= 3 => {
            let available = st.lists.get(&args[1]).copied().unwrap_or(0);
            if available == 0 {
                return b"$-1\r\n".to_vec();
            }
            st.lists.insert(args[1].clone(), available - 1);
            *st.lists.entry(args[2].clone()).or_insert(0) += 1;
            b"$4\r\ntask\r\n".to_vec()
        }
        other => format!("-ERR unknown command '{other}'\r\n").into_bytes(),
    }
}
