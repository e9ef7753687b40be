//! A walsender client: PostgreSQL's streaming replication protocol on `postgres-protocol` + tokio.
//!
//! tokio-postgres cannot speak it (no `replication=database`, no CopyBoth), so this module frames messages itself:
//!
//! ```text
//!   startup(replication=database) → auth (trust | cleartext | md5 | SCRAM-SHA-256) → ReadyForQuery
//!   simple queries: IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, SHOW …
//!   START_REPLICATION SLOT s LOGICAL lsn (options) → CopyBothResponse ('W')
//!     server → CopyData 'w' XLogData (wal start, wal end, send time, plugin bytes) | 'k' keepalive
//!     client → CopyData 'r' standby status update (write, flush, apply, time, reply-requested)
//! ```
//!
//! After START_REPLICATION a reader task owns the socket's read half and forwards decoded messages through a
//! bounded channel (so a slow consumer pushes back on TCP, and receiving is cancel-safe in `select!`); the caller
//! keeps the write half for status updates.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgm_common::config::{PgConfig, SslMode};
use pgm_common::Lsn;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The connection's two halves, plain TCP or TLS.
type ReadHalf = BufReader<Box<dyn AsyncRead + Send + Unpin>>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;
use tokio::sync::mpsc;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

#[derive(Debug, thiserror::Error)]
pub enum WalsenderError {
    #[error("connection to {target} failed: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("replication connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("server error {code}: {message}{}", hint.as_ref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
    Server { code: String, message: String, hint: Option<String> },
    #[error("authentication: {0}")]
    Auth(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(
        "the decoding plugin dropped a change (server warning: {0}); the table has no replica identity, so its \
             UPDATE/DELETE was not logged with the row's key and cannot be replayed. Nothing after it was confirmed to \
             the slot. Fix: ALTER TABLE … REPLICA IDENTITY FULL (or add a primary key) on DB1, then bootstrap that \
             table again (pgm-capture bootstrap --restart), since the dropped change is lost from the WAL"
    )]
    SkippedChange(String),
}

impl WalsenderError {
    /// Worth retrying with a new connection (the server restarted, the network blipped, the slot is still held by
    /// a dying predecessor) rather than a setup problem the operator must fix.
    pub fn is_transient(&self) -> bool {
        match self {
            WalsenderError::Connect { .. } | WalsenderError::Io(_) => true,
            WalsenderError::Server { code, .. } => {
                code.starts_with("08") || code.starts_with("57P") || code == "55006" || code == "53300"
            }
            _ => false,
        }
    }
}

type Result<T, E = WalsenderError> = std::result::Result<T, E>;

struct Frame {
    tag: u8,
    body: Bytes,
}

async fn read_frame(reader: &mut ReadHalf) -> Result<Frame> {
    let tag = reader.read_u8().await?;
    let len = reader.read_i32().await?;
    if !(4..=1 << 30).contains(&len) {
        return Err(WalsenderError::Protocol(format!("message {:?} with invalid length {len}", char::from(tag))));
    }
    let mut body = vec![0; len as usize - 4];
    reader.read_exact(&mut body).await?;
    Ok(Frame { tag, body: Bytes::from(body) })
}

/// Parses a frame with postgres-protocol (which knows everything but CopyBothResponse).
fn parse(frame: &Frame) -> Result<Message> {
    let mut buf = BytesMut::with_capacity(frame.body.len() + 5);
    buf.put_u8(frame.tag);
    buf.put_i32(frame.body.len() as i32 + 4);
    buf.put_slice(&frame.body);
    Message::parse(&mut buf)?.ok_or_else(|| WalsenderError::Protocol("incomplete message".into()))
}

fn server_error(frame: &Frame) -> WalsenderError {
    let Ok(Message::ErrorResponse(body)) = parse(frame) else {
        return WalsenderError::Protocol("unreadable error response".into());
    };
    let (code, message, hint) = notice_fields(body.fields());
    WalsenderError::Server { code, message, hint }
}

/// A WARNING the decoding plugin raised in the stream because it dropped a change: wal2json's `no tuple identifier
/// for UPDATE in table "s"."t"` (a table without replica identity). Other notices are not errors.
fn skipped_change(frame: &Frame) -> Option<WalsenderError> {
    let Ok(Message::NoticeResponse(body)) = parse(frame) else { return None };
    let (_, message, _) = notice_fields(body.fields());
    message.starts_with("no tuple identifier for").then_some(WalsenderError::SkippedChange(message))
}

fn notice_fields(mut fields: postgres_protocol::message::backend::ErrorFields<'_>) -> (String, String, Option<String>) {
    use fallible_iterator::FallibleIterator;
    let (mut code, mut message, mut hint) = (String::new(), String::new(), None);
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => code = value,
            b'M' => message = value,
            b'H' => hint = Some(value),
            _ => {}
        }
    }
    (code, message, hint)
}

/// A replication connection before streaming: commands answer with rows of text.
pub struct Walsender {
    reader: ReadHalf,
    writer: WriteHalf,
}

/// The answer of `CREATE_REPLICATION_SLOT … LOGICAL`.
#[derive(Debug, Clone)]
pub struct SlotCreated {
    pub consistent_point: Lsn,
    /// Usable with `SET TRANSACTION SNAPSHOT` until the next command on this connection.
    pub snapshot_name: Option<String>,
}

impl Walsender {
    pub async fn connect(pg: &PgConfig, application_name: &str) -> Result<Self> {
        let target = format!("{}:{}", pg.host, pg.port);
        let stream = TcpStream::connect(&target).await.map_err(|source| WalsenderError::Connect { target, source })?;
        stream.set_nodelay(true)?;
        let (read, writer) = negotiate_tls(pg, stream).await?;
        let mut conn = Walsender { reader: BufReader::with_capacity(1 << 16, read), writer };
        let mut buf = BytesMut::new();
        frontend::startup_message(
            [
                ("user", pg.user.as_str()),
                ("database", pg.dbname.as_str()),
                ("replication", "database"),
                ("application_name", application_name),
                ("client_encoding", "UTF8"),
            ],
            &mut buf,
        )?;
        conn.writer.write_all(&buf).await?;
        conn.authenticate(pg).await?;
        Ok(conn)
    }

    async fn send(&mut self, buf: &BytesMut) -> Result<()> {
        self.writer.write_all(buf).await?;
        Ok(())
    }

    async fn authenticate(&mut self, pg: &PgConfig) -> Result<()> {
        let password = pg.password.expose().as_bytes();
        let need_password = || {
            if password.is_empty() {
                Err(WalsenderError::Auth(format!(
                    "the server asks {} for a password and none is configured: set source.password (or PGM__SOURCE__PASSWORD)",
                    pg.user
                )))
            } else {
                Ok(())
            }
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let frame = read_frame(&mut self.reader).await?;
            if frame.tag == b'E' {
                return Err(server_error(&frame));
            }
            let mut buf = BytesMut::new();
            match parse(&frame)? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    need_password()?;
                    frontend::password_message(password, &mut buf)?;
                    self.send(&buf).await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    need_password()?;
                    let hash = postgres_protocol::authentication::md5_hash(pg.user.as_bytes(), password, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut buf)?;
                    self.send(&buf).await?;
                }
                Message::AuthenticationSasl(body) => {
                    need_password()?;
                    use fallible_iterator::FallibleIterator;
                    let mechanisms: Vec<String> = body.mechanisms().map(|m| Ok(m.to_owned())).collect()?;
                    if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(WalsenderError::Auth(format!(
                            "server offers only {mechanisms:?}; SCRAM-SHA-256 is supported"
                        )));
                    }
                    let client = ScramSha256::new(password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut buf)?;
                    self.send(&buf).await?;
                    scram = Some(client);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let client =
                        scram.as_mut().ok_or_else(|| WalsenderError::Auth("unexpected SASL continue".into()))?;
                    client.update(body.data()).map_err(|e| WalsenderError::Auth(e.to_string()))?;
                    frontend::sasl_response(client.message(), &mut buf)?;
                    self.send(&buf).await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let client = scram.as_mut().ok_or_else(|| WalsenderError::Auth("unexpected SASL final".into()))?;
                    client.finish(body.data()).map_err(|e| WalsenderError::Auth(e.to_string()))?;
                }
                Message::ParameterStatus(_) | Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => return Ok(()),
                _ => {
                    return Err(WalsenderError::Auth(format!(
                        "unsupported authentication request (message {:?}); use trust, password, md5 or scram-sha-256",
                        char::from(frame.tag)
                    )))
                }
            }
        }
    }

    /// Runs one simple-query command and returns its rows as text (NULL as `None`).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf)?;
        self.send(&buf).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = read_frame(&mut self.reader).await?;
            match frame.tag {
                b'E' => error = Some(server_error(&frame)),
                b'D' => {
                    let Message::DataRow(row) = parse(&frame)? else { unreachable!("tag D is DataRow") };
                    let buffer = row.buffer();
                    use fallible_iterator::FallibleIterator;
                    let values: Vec<Option<String>> = row
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
                        .collect()?;
                    rows.push(values);
                }
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {} // RowDescription, CommandComplete, notices, parameter status
            }
        }
    }

    /// `IDENTIFY_SYSTEM`: (system identifier, current WAL flush location).
    pub async fn identify_system(&mut self) -> Result<(String, Lsn)> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows.first().ok_or_else(|| WalsenderError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let lsn = lsn_column(row, 2, "IDENTIFY_SYSTEM xlogpos")?;
        Ok((row.first().cloned().flatten().unwrap_or_default(), lsn))
    }

    /// `wal_sender_timeout` in milliseconds (0 = disabled).
    pub async fn wal_sender_timeout_ms(&mut self) -> Result<u64> {
        let rows = self.simple_query("SHOW wal_sender_timeout").await?;
        let text = rows.first().and_then(|r| r.first().cloned().flatten()).unwrap_or_default();
        Ok(parse_duration_ms(&text).unwrap_or(60_000))
    }

    /// `CREATE_REPLICATION_SLOT name LOGICAL plugin [EXPORT_SNAPSHOT | NOEXPORT_SNAPSHOT]`.
    pub async fn create_slot(&mut self, name: &str, plugin: &str, export_snapshot: bool) -> Result<SlotCreated> {
        self.create_slot_as(name, "", plugin, export_snapshot).await
    }

    /// A TEMPORARY slot with an exported snapshot: it (and its snapshot) go away with this connection. A resumed
    /// bootstrap takes its consistent (snapshot, LSN) pair from one.
    pub async fn create_temporary_slot(&mut self, name: &str, plugin: &str) -> Result<SlotCreated> {
        self.create_slot_as(name, "TEMPORARY ", plugin, true).await
    }

    async fn create_slot_as(
        &mut self,
        name: &str,
        kind: &str,
        plugin: &str,
        export_snapshot: bool,
    ) -> Result<SlotCreated> {
        let export = if export_snapshot { "EXPORT_SNAPSHOT" } else { "NOEXPORT_SNAPSHOT" };
        let rows = self
            .simple_query(&format!("CREATE_REPLICATION_SLOT {} {kind}LOGICAL {plugin} {export}", quote_slot(name)))
            .await?;
        let row =
            rows.first().ok_or_else(|| WalsenderError::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        let consistent_point = lsn_column(row, 1, "CREATE_REPLICATION_SLOT consistent_point")?;
        Ok(SlotCreated { consistent_point, snapshot_name: row.get(2).cloned().flatten() })
    }

    /// `START_REPLICATION SLOT … LOGICAL lsn (options)`; `Lsn::ZERO` resumes at the slot's confirmed_flush_lsn.
    pub async fn start_logical(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(String, String)],
    ) -> Result<ReplicationStream> {
        let options = options
            .iter()
            .map(|(k, v)| format!("\"{}\" '{}'", k.replace('"', "\"\""), v.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("START_REPLICATION SLOT {} LOGICAL {start} ({options})", quote_slot(slot));
        let mut buf = BytesMut::new();
        frontend::query(&sql, &mut buf)?;
        self.send(&buf).await?;
        loop {
            let frame = read_frame(&mut self.reader).await?;
            match frame.tag {
                b'W' => break,
                b'E' => return Err(server_error(&frame)),
                b'N' | b'S' => {}
                other => {
                    return Err(WalsenderError::Protocol(format!(
                        "unexpected message {:?} after START_REPLICATION",
                        char::from(other)
                    )))
                }
            }
        }
        let (tx, rx) = mpsc::channel(1024);
        let reader = tokio::spawn(read_stream(self.reader, tx));
        Ok(ReplicationStream { rx, writer: self.writer, reader })
    }
}

/// TLS as `sslmode` says, the same way as every ordinary connection ([`PgConfig::tls`]): an SSLRequest, then the
/// handshake with certificate checks (verify-ca: the chain; verify-full: the chain and the host name). `prefer`
/// continues in plain text when the server declines; the other modes refuse.
async fn negotiate_tls(pg: &PgConfig, mut stream: TcpStream) -> Result<(Box<dyn AsyncRead + Send + Unpin>, WriteHalf)> {
    let plain = |stream: TcpStream| -> (Box<dyn AsyncRead + Send + Unpin>, WriteHalf) {
        let (read, write) = stream.into_split();
        (Box::new(read), Box::new(write))
    };
    let connector = match pg.tls() {
        Ok(None) => return Ok(plain(stream)),
        Ok(Some(connector)) => connector,
        Err(error) => return Err(WalsenderError::Tls(error.to_string())),
    };
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    stream.write_all(&buf).await?;
    match stream.read_u8().await? {
        b'S' => {}
        b'N' if pg.sslmode == SslMode::Prefer => return Ok(plain(stream)),
        b'N' => {
            return Err(WalsenderError::Tls(format!(
                "{} does not accept TLS, but sslmode is {}: enable ssl on the server or lower sslmode",
                pg.describe(),
                pg.sslmode.as_str()
            )))
        }
        other => return Err(WalsenderError::Protocol(format!("unexpected answer {other} to SSLRequest"))),
    }
    let tls_error = |e: &dyn std::fmt::Display| WalsenderError::Tls(format!("{}: {e}", pg.describe()));
    let mut config = connector.configure().map_err(|e| tls_error(&e))?;
    if pg.sslmode != SslMode::VerifyFull {
        config.set_verify_hostname(false);
    }
    let ssl = config.into_ssl(&pg.host).map_err(|e| tls_error(&e))?;
    let mut tls = tokio_openssl::SslStream::new(ssl, stream).map_err(|e| tls_error(&e))?;
    std::pin::Pin::new(&mut tls).connect().await.map_err(|e| tls_error(&e))?;
    let (read, write) = tokio::io::split(tls);
    Ok((Box::new(read), Box::new(write)))
}

/// Column `index` of a command's answer row, as an LSN.
fn lsn_column(row: &[Option<String>], index: usize, what: &str) -> Result<Lsn> {
    row.get(index)
        .and_then(|value| value.as_deref())
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| WalsenderError::Protocol(format!("{what} missing or not an LSN")))
}

fn quote_slot(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Parses a PostgreSQL duration setting as SHOW prints it (`60s`, `1min`, `500ms`, `0`).
fn parse_duration_ms(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    Some(match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1000,
        "min" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return None,
    })
}

/// What the server streams after START_REPLICATION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// One output-plugin message (with wal2json format-version 2: one JSON object).
    XLogData { wal_start: Lsn, wal_end: Lsn, data: Bytes },
    /// The server's WAL end; `reply_requested` asks for a status update now.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// Decodes a CopyData payload of the replication stream.
pub fn decode_copy_data(mut payload: Bytes) -> Result<ReplicationMessage> {
    let short = || WalsenderError::Protocol("short replication message".into());
    match payload.first() {
        Some(b'w') if payload.len() >= 25 => {
            payload.advance(1);
            let wal_start = Lsn(payload.get_u64());
            let wal_end = Lsn(payload.get_u64());
            let _send_time = payload.get_i64();
            Ok(ReplicationMessage::XLogData { wal_start, wal_end, data: payload })
        }
        Some(b'k') if payload.len() >= 18 => {
            payload.advance(1);
            let wal_end = Lsn(payload.get_u64());
            let _send_time = payload.get_i64();
            Ok(ReplicationMessage::Keepalive { wal_end, reply_requested: payload.get_u8() == 1 })
        }
        Some(b'w' | b'k') => Err(short()),
        Some(other) => Err(WalsenderError::Protocol(format!("unknown replication message {:?}", char::from(*other)))),
        None => Err(short()),
    }
}

/// The standby status update: write = received, flush = apply = durable downstream.
pub fn encode_status_update(write: Lsn, flush: Lsn, apply: Lsn, reply_requested: bool) -> BytesMut {
    let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    let mut payload = BytesMut::with_capacity(34);
    payload.put_u8(b'r');
    payload.put_u64(write.0);
    payload.put_u64(flush.0);
    payload.put_u64(apply.0);
    payload.put_i64(now_us - PG_EPOCH_OFFSET_US);
    payload.put_u8(u8::from(reply_requested));
    let mut buf = BytesMut::with_capacity(40);
    frontend::CopyData::new(payload.freeze()).expect("small payload").write(&mut buf);
    buf
}

async fn read_stream(mut reader: ReadHalf, tx: mpsc::Sender<Result<ReplicationMessage>>) {
    loop {
        let message = match read_frame(&mut reader).await {
            Ok(Frame { tag: b'd', body }) => decode_copy_data(body),
            Ok(frame @ Frame { tag: b'E', .. }) => Err(server_error(&frame)),
            Ok(Frame { tag: b'c', .. }) => Err(WalsenderError::Protocol("server ended the replication stream".into())),
            Ok(frame @ Frame { tag: b'N', .. }) => match skipped_change(&frame) {
                Some(error) => Err(error),
                None => continue,
            },
            Ok(Frame { tag: b'S', .. }) => continue,
            Ok(Frame { tag, .. }) => {
                Err(WalsenderError::Protocol(format!("unexpected message {:?} in stream", char::from(tag))))
            }
            Err(err) => Err(err),
        };
        let failed = message.is_err();
        if tx.send(message).await.is_err() || failed {
            return;
        }
    }
}

/// The streaming half: receive messages, send status updates.
pub struct ReplicationStream {
    rx: mpsc::Receiver<Result<ReplicationMessage>>,
    writer: WriteHalf,
    reader: tokio::task::JoinHandle<()>,
}

impl ReplicationStream {
    /// Next message; cancel-safe.
    pub async fn recv(&mut self) -> Result<ReplicationMessage> {
        match self.rx.recv().await {
            Some(message) => message,
            None => Err(WalsenderError::Protocol("replication reader stopped".into())),
        }
    }

    pub async fn send_status(&mut self, write: Lsn, flush: Lsn, apply: Lsn, reply_requested: bool) -> Result<()> {
        self.writer.write_all(&encode_status_update(write, flush, apply, reply_requested)).await?;
        Ok(())
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_xlogdata_and_keepalive_bytes() {
        // Captured layout: 'w', wal start, wal end, send time, plugin bytes.
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(0x1_5000_0028);
        w.put_u64(0x1_5000_0100);
        w.put_i64(848_000_000_000_000);
        w.put_slice(br#"{"action":"B"}"#);
        assert_eq!(
            decode_copy_data(w.freeze()).unwrap(),
            ReplicationMessage::XLogData {
                wal_start: "1/50000028".parse().unwrap(),
                wal_end: "1/50000100".parse().unwrap(),
                data: Bytes::from_static(br#"{"action":"B"}"#)
            }
        );
        let k = Bytes::from_static(&[b'k', 0, 0, 0, 0, 0x01, 0x55, 0x13, 0x70, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(
            decode_copy_data(k).unwrap(),
            ReplicationMessage::Keepalive { wal_end: "0/1551370".parse().unwrap(), reply_requested: true }
        );
        assert!(decode_copy_data(Bytes::from_static(b"k\0\0")).is_err());
        assert!(decode_copy_data(Bytes::from_static(b"x")).is_err());
    }

    #[test]
    fn status_update_layout() {
        let buf = encode_status_update(Lsn(0x30), Lsn(0x20), Lsn(0x20), true);
        assert_eq!(buf[0], b'd');
        assert_eq!(i32::from_be_bytes(buf[1..5].try_into().unwrap()), 4 + 34);
        assert_eq!(buf[5], b'r');
        assert_eq!(u64::from_be_bytes(buf[6..14].try_into().unwrap()), 0x30);
        assert_eq!(u64::from_be_bytes(buf[14..22].try_into().unwrap()), 0x20);
        assert_eq!(u64::from_be_bytes(buf[22..30].try_into().unwrap()), 0x20);
        assert_eq!(buf[38], 1);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("60s"), Some(60_000));
        assert_eq!(parse_duration_ms("1min"), Some(60_000));
        assert_eq!(parse_duration_ms("0"), Some(0));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
    }
}
