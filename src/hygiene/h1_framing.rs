//! Seeing HTTP/1 request framing before hyper does.
//!
//! hyper 1's HTTP/1 server accepts a request carrying both `Content-Length` and
//! `Transfer-Encoding: chunked`: it drops `Content-Length`, frames the body as chunked and closes
//! the connection after answering, so the service never learns that the request was ambiguous.
//! It also lets other framing through that [`check_request_framing`] refuses
//! (`Transfer-Encoding: gzip, chunked`...). vakt must answer all of those 400 itself.
//!
//! [`ScannedIo`] wraps the (decrypted) client stream of one HTTP/1 connection. Every byte hyper
//! reads first goes through a [`FramingScanner`], which finds each request head, records the
//! verdict of [`check_request_framing`] for it in a shared [`FramingVerdicts`], and skips the
//! body exactly as hyper frames it so that it finds the next head (and never mistakes body bytes
//! for a head). Because the bytes are scanned before `poll_read` returns them, the verdict of the
//! n-th request exists before hyper can have parsed that request.
//!
//! The request handler counts the requests of its connection (0, 1, 2, ...) and calls
//! [`FramingVerdicts::take`] with that index first thing:
//!
//! - `Some(Ok(()))`: the head was seen and its framing is fine;
//! - `Some(Err(e))`: answer 400 (label: [`FramingError::reason_code`]), preferably with
//!   `Connection: close`, and never forward the request;
//! - `None`: the scanner could not vouch for the request — **treat it as a refusal (fail
//!   closed)**. With hyper's defaults this only happens when the scanner stopped at one of its
//!   own limits while hyper went on: a head larger than [`ScannerConfig::max_head_size`] (hyper
//!   accepts up to its `max_buf_size`, ~400 KiB by default), more than
//!   [`ScannerConfig::max_headers`] header lines or [`ScannerConfig::max_pending_verdicts`]
//!   pipelined heads, or hyper parser options that differ from the scanner's. Treating `None` as
//!   "fine" would let `<huge head>` + `<CL+TE request>` on one connection through unseen.
//!
//! The scanner follows hyper 1.x's server-side framing rules (`proto/h1/role.rs` and
//! `proto/h1/decode.rs`):
//!
//! - heads are parsed with `httparse` (leading empty lines skipped, bare-LF line ends allowed);
//! - any `Transfer-Encoding` field line makes the body chunked when the *last* such line ends with
//!   the `chunked` coding (`Content-Length` is then ignored); otherwise (or in HTTP/1.0) hyper
//!   refuses the request and closes;
//! - else the first `Content-Length` line (`1*DIGIT`, every other line equal) gives the length;
//! - else there is no body (whatever the method);
//! - chunked: `1*HEXDIG`, optional spaces/tabs, optional `;extension`, CRLF (strict), data,
//!   CRLF, ..., `0` line, trailer lines (each ending CRLF), empty line.
//!
//! Whenever the stream is something hyper would refuse (and then close the connection), or
//! something the scanner cannot follow, the scanner *gives up*: it records nothing more and
//! [`ScannedIo`] passes reads through untouched. Memory is bounded: only the current head is
//! buffered (at most [`ScannerConfig::max_head_size`] bytes) and at most
//! [`ScannerConfig::max_pending_verdicts`] verdicts wait to be taken.
//!
//! `Upgrade` and `CONNECT` requests do not stop the scan: hyper keeps parsing HTTP/1 on the
//! connection when the service does not switch protocols (answers other than 101, or non-2xx to
//! `CONNECT`), so stopping there would leave the next requests unchecked. When the connection
//! does switch, the scanner sees the other protocol's bytes: WebSocket frames, TLS records and the
//! HTTP/2 preface make it give up at once, and HTTP/1 tunnelled through `CONNECT` only fills the
//! bounded verdict queue (nobody takes those), after which it gives up.
//!
//! Wrap the stream hyper reads from: for TLS connections that is the decrypted stream
//! (`ScannedIo<TlsStream<TcpStream>>`), never the raw TCP socket. For HTTP/2 connections (for
//! example behind hyper-util's auto builder) the scanner gives up on the connection preface and
//! costs nothing afterwards.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::hygiene::{FramingError, check_request_framing};

/// Default [`ScannerConfig::max_head_size`]: 64 KiB (Envoy's default is 60 KiB).
pub const DEFAULT_MAX_HEAD_SIZE: usize = 64 * 1024;
/// Default [`ScannerConfig::max_headers`] (hyper's own default limit is 100).
pub const DEFAULT_MAX_HEADERS: usize = 128;
/// Default [`ScannerConfig::max_pending_verdicts`].
pub const DEFAULT_MAX_PENDING_VERDICTS: usize = 4096;

/// Head buffers that grew beyond this are released after their head instead of kept for reuse.
const KEEP_HEAD_CAPACITY: usize = 8 * 1024;

/// The verdict on one request head: what [`check_request_framing`] said.
pub type Verdict = Result<(), FramingError>;

/// Limits and parser options of a [`FramingScanner`].
///
/// Keep these at least as permissive as the hyper server they front (hyper's `max_headers`,
/// `max_header_size`/`max_buf_size`, `allow_multiple_spaces_in_request_line_delimiters`,
/// `ignore_invalid_headers`): where the scanner gives up and hyper does not, the following
/// requests get no verdict (`None`, to be refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannerConfig {
    /// Longest request head (request line, header lines, final empty line; leading empty lines
    /// not counted) that is scanned. A longer one stops the scan.
    pub max_head_size: usize,
    /// Most header lines parsed in one head; more stops the scan.
    pub max_headers: usize,
    /// Most verdicts recorded and not yet taken; one more stops the scan.
    pub max_pending_verdicts: usize,
    /// Same as hyper's `http1::Builder::allow_multiple_spaces_in_request_line_delimiters`.
    pub allow_multiple_spaces_in_request_line_delimiters: bool,
    /// Same as hyper's `http1::Builder::ignore_invalid_headers`.
    pub ignore_invalid_headers: bool,
}

impl Default for ScannerConfig {
    fn default() -> Self {
        Self {
            max_head_size: DEFAULT_MAX_HEAD_SIZE,
            max_headers: DEFAULT_MAX_HEADERS,
            max_pending_verdicts: DEFAULT_MAX_PENDING_VERDICTS,
            allow_multiple_spaces_in_request_line_delimiters: false,
            ignore_invalid_headers: false,
        }
    }
}

// ------------------------------------------------------------------------------------ verdicts

#[derive(Debug, Default)]
struct VerdictQueue {
    /// Index of `slots[0]`.
    base: u64,
    /// One slot per recorded head from `base` on; `None` once taken.
    slots: VecDeque<Option<Verdict>>,
}

/// Verdicts of the request heads of one connection, in request order, shared between the
/// [`FramingScanner`] (which records them while hyper reads) and the request handler (which
/// takes them).
#[derive(Debug)]
pub struct FramingVerdicts {
    queue: Mutex<VerdictQueue>,
    max_pending: usize,
}

impl FramingVerdicts {
    fn new(max_pending: usize) -> Self {
        Self {
            queue: Mutex::new(VerdictQueue::default()),
            max_pending,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VerdictQueue> {
        // The queue is consistent after every operation, so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record the verdict of the next head. False (nothing recorded) when
    /// `max_pending` verdicts are already waiting.
    fn push(&self, verdict: Verdict) -> bool {
        let mut q = self.lock();
        if q.slots.len() >= self.max_pending {
            return false;
        }
        q.slots.push_back(Some(verdict));
        true
    }

    /// The verdict on the `index`-th request (0-based) of the connection, removed from the
    /// queue. `None`: no verdict was recorded for that index (the scanner gave up before, or has
    /// not seen that head), or it was already taken. A request whose verdict is `None` must be
    /// refused: see the module documentation.
    pub fn take(&self, index: u64) -> Option<Verdict> {
        let mut q = self.lock();
        let offset = usize::try_from(index.checked_sub(q.base)?).ok()?;
        let verdict = q.slots.get_mut(offset)?.take();
        // Taken slots at the front are dropped; requests are taken in order, so this keeps the
        // queue at the heads read ahead of the handler.
        while let Some(None) = q.slots.front() {
            q.slots.pop_front();
            q.base += 1;
        }
        verdict
    }

    /// Number of verdicts recorded and not yet taken (slots still held).
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        let q = self.lock();
        q.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Number of request heads recorded since the connection started (taken or not).
    #[cfg(test)]
    pub fn recorded(&self) -> u64 {
        let q = self.lock();
        q.base + q.slots.len() as u64
    }
}

// ------------------------------------------------------------------------------------- scanner

/// Where the scanner is in the client→server byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for / reading a request head.
    Head,
    /// `Content-Length` body: bytes left.
    Length(u64),
    /// Chunked body.
    Chunked(Chunk),
    /// Gave up: nothing more is scanned or recorded on this connection.
    Done,
}

/// hyper's `ChunkedState`, with the chunk size carried along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// First hex digit of a chunk-size line.
    Start,
    /// More hex digits.
    Size(u64),
    /// Spaces/tabs after the size.
    SizeLws(u64),
    /// Chunk extension, up to CR.
    Extension(u64),
    /// LF ending the chunk-size line.
    SizeLf(u64),
    /// Chunk data: bytes left.
    Data(u64),
    /// CR after chunk data.
    DataCr,
    /// LF after chunk data.
    DataLf,
    /// After the last-chunk line or a trailer line: CR of the final empty line, or a trailer.
    EndCr,
    /// Inside a trailer line, up to CR.
    Trailer,
    /// LF ending a trailer line.
    TrailerLf,
    /// LF of the final empty line.
    EndLf,
}

/// What the current head line holds so far (to find the empty line that ends the head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Nothing since the last LF.
    Empty,
    /// Exactly one CR since the last LF.
    Cr,
    /// Anything else.
    Text,
}

impl Line {
    /// The state after `text`, bytes of one line with no LF among them.
    fn after(self, text: &[u8]) -> Self {
        match (self, text) {
            (line, []) => line,
            (Self::Empty, [b'\r']) => Self::Cr,
            _ => Self::Text,
        }
    }
}

/// Where the scanner is inside a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadPos {
    /// Before the request line: skipping empty lines (`CR` must be followed by `LF`).
    Leading { after_cr: bool },
    /// In the method token (every byte must be a `tchar` up to the first space).
    Method,
    /// Rest of the request line (checked with httparse at its LF).
    RequestLine,
    /// In the header section.
    Fields,
}

/// Streaming HTTP/1 request-framing scanner for the client→server bytes of one connection.
///
/// Feed it every byte the server reads, in order and in any chunking, with
/// [`FramingScanner::feed`]; it records one verdict per request head in its
/// [`FramingVerdicts`]. See the module documentation for the rules it follows.
#[derive(Debug)]
pub struct FramingScanner {
    config: ScannerConfig,
    parser: httparse::ParserConfig,
    verdicts: Arc<FramingVerdicts>,
    state: State,
    /// The current head (from its request line on).
    head: Vec<u8>,
    head_pos: HeadPos,
    line: Line,
}

impl Default for FramingScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl FramingScanner {
    /// A scanner with [`ScannerConfig::default`].
    pub fn new() -> Self {
        Self::with_config(ScannerConfig::default())
    }

    /// A scanner with the given limits and parser options.
    pub fn with_config(config: ScannerConfig) -> Self {
        let mut parser = httparse::ParserConfig::default();
        parser
            .allow_multiple_spaces_in_request_line_delimiters(
                config.allow_multiple_spaces_in_request_line_delimiters,
            )
            .ignore_invalid_headers_in_requests(config.ignore_invalid_headers);
        let verdicts = Arc::new(FramingVerdicts::new(config.max_pending_verdicts));
        Self {
            config,
            parser,
            verdicts,
            state: State::Head,
            head: Vec::new(),
            head_pos: HeadPos::Leading { after_cr: false },
            line: Line::Text,
        }
    }

    /// The verdict queue this scanner records into (share it with the request handler).
    pub fn verdicts(&self) -> Arc<FramingVerdicts> {
        Arc::clone(&self.verdicts)
    }

    /// False once the scanner has given up on the connection.
    pub fn is_active(&self) -> bool {
        self.state != State::Done
    }

    /// Bytes of the current, incomplete head held in memory (at most
    /// [`ScannerConfig::max_head_size`]).
    #[cfg(test)]
    pub fn buffered_len(&self) -> usize {
        self.head.len()
    }

    /// Consume the next bytes the server reads from the client.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let used = match self.state {
                State::Done => return,
                State::Head => self.feed_head(bytes),
                State::Length(left) => {
                    let n = usize::try_from(left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Length(left)
                    };
                    n
                }
                State::Chunked(chunk) => self.feed_chunked(chunk, bytes),
            };
            bytes = bytes.get(used..).unwrap_or_default();
        }
    }

    /// Stop scanning for the rest of the connection.
    fn give_up(&mut self) {
        self.state = State::Done;
        self.head = Vec::new();
    }

    /// Ready for the next head.
    fn start_head(&mut self) {
        self.state = State::Head;
        self.head_pos = HeadPos::Leading { after_cr: false };
        self.line = Line::Text;
        if self.head.capacity() > KEEP_HEAD_CAPACITY {
            self.head = Vec::new();
        } else {
            self.head.clear();
        }
    }

    /// Head bytes: returns how many of `bytes` were used.
    fn feed_head(&mut self, bytes: &[u8]) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.head_pos {
                HeadPos::Leading { after_cr } => {
                    // httparse's skip_empty_lines: LF, or CR LF; a CR alone is an error.
                    i += 1;
                    match (after_cr, b) {
                        (_, b'\n') => self.head_pos = HeadPos::Leading { after_cr: false },
                        (false, b'\r') => self.head_pos = HeadPos::Leading { after_cr: true },
                        (false, b) if is_tchar(b) => {
                            self.head_pos = HeadPos::Method;
                            if !self.push_head(&[b]) {
                                return bytes.len();
                            }
                        }
                        _ => {
                            self.give_up();
                            return bytes.len();
                        }
                    }
                }
                HeadPos::Method => {
                    // Cheap early exit for what is not HTTP/1 (TLS, WebSocket frames...).
                    let run = bytes[i..].iter().take_while(|&&c| is_tchar(c)).count();
                    let end = i + run;
                    let Some(&next) = bytes.get(end) else {
                        self.push_head(&bytes[i..]);
                        return bytes.len();
                    };
                    if next != b' ' {
                        self.give_up();
                        return bytes.len();
                    }
                    if !self.push_head(&bytes[i..=end]) {
                        return bytes.len();
                    }
                    self.head_pos = HeadPos::RequestLine;
                    i = end + 1;
                }
                HeadPos::RequestLine => {
                    let Some(lf) = bytes[i..].iter().position(|&c| c == b'\n') else {
                        self.push_head(&bytes[i..]);
                        return bytes.len();
                    };
                    let end = i + lf + 1;
                    if !self.push_head(&bytes[i..end]) {
                        return bytes.len();
                    }
                    i = end;
                    if !self.request_line_ok() {
                        self.give_up();
                        return bytes.len();
                    }
                    self.head_pos = HeadPos::Fields;
                    self.line = Line::Empty;
                }
                HeadPos::Fields => {
                    // Find the LF ending an empty line ("" or "\r"), from LF to LF.
                    let rest = &bytes[i..];
                    let mut line = self.line;
                    let mut line_start = 0;
                    let mut end = None;
                    for lf in memchr::memchr_iter(b'\n', rest) {
                        if matches!(line.after(&rest[line_start..lf]), Line::Empty | Line::Cr) {
                            end = Some(i + lf + 1);
                            break;
                        }
                        line = Line::Empty;
                        line_start = lf + 1;
                    }
                    if end.is_none() {
                        line = line.after(&rest[line_start..]);
                    }
                    self.line = line;
                    let Some(end) = end else {
                        self.push_head(&bytes[i..]);
                        return bytes.len();
                    };
                    if !self.push_head(&bytes[i..end]) {
                        return bytes.len();
                    }
                    self.finish_head();
                    return end;
                }
            }
        }
        bytes.len()
    }

    /// Append to the current head; gives up (false) past the size cap.
    fn push_head(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.config.max_head_size.saturating_sub(self.head.len()) {
            self.give_up();
            return false;
        }
        self.head.extend_from_slice(bytes);
        true
    }

    /// The request line (the head so far, ending with its LF) is one httparse accepts.
    fn request_line_ok(&self) -> bool {
        let mut no_headers = [];
        let mut req = httparse::Request::new(&mut no_headers);
        // With the head cut right after the request line, a valid one is `Partial`.
        matches!(
            self.parser.parse_request(&mut req, &self.head),
            Ok(httparse::Status::Partial)
        )
    }

    /// A whole head is in `self.head`: record its verdict and set up the body framing.
    fn finish_head(&mut self) {
        let Some(head) = self.parse_head() else {
            self.give_up();
            return;
        };
        if !self.verdicts.push(head.verdict) {
            self.give_up();
            return;
        }
        match head.body {
            Body::None => self.start_head(),
            Body::Length(n) => {
                self.start_head();
                if n > 0 {
                    self.state = State::Length(n);
                }
            }
            Body::Chunked => {
                self.start_head();
                self.state = State::Chunked(Chunk::Start);
            }
            Body::Refused => self.give_up(),
        }
    }

    /// Parse the head in `self.head`; `None` when httparse refuses it (hyper will too).
    fn parse_head(&self) -> Option<ParsedHead> {
        // Header slots on the stack, left uninitialised (httparse writes those it uses): zeroing
        // a heap vector of them for every head cost more than the parse.
        let mut on_stack = [const { std::mem::MaybeUninit::uninit() }; DEFAULT_MAX_HEADERS];
        let mut on_heap = Vec::new();
        let storage = if self.config.max_headers <= on_stack.len() {
            &mut on_stack[..self.config.max_headers]
        } else {
            on_heap.resize_with(self.config.max_headers, std::mem::MaybeUninit::uninit);
            &mut on_heap[..]
        };
        let mut req = httparse::Request::new(&mut []);
        match self
            .parser
            .parse_request_with_uninit_headers(&mut req, &self.head, storage)
        {
            Ok(httparse::Status::Complete(n)) if n == self.head.len() => {}
            _ => return None,
        }
        let version = match req.version? {
            0 => Version::HTTP_10,
            1 => Version::HTTP_11,
            _ => return None,
        };

        let mut framing = HeaderMap::new();
        let mut unrepresentable = None;
        let mut last_te: Option<&[u8]> = None;
        let mut first_cl: Option<&[u8]> = None;
        let mut cl_lines_agree = true;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            let (header, error) = if name.eq_ignore_ascii_case(b"transfer-encoding") {
                last_te = Some(h.value);
                (TRANSFER_ENCODING, FramingError::UnsupportedTransferCoding)
            } else if name.eq_ignore_ascii_case(b"content-length") {
                match first_cl {
                    None => first_cl = Some(h.value),
                    Some(first) => cl_lines_agree &= digits(first) == digits(h.value),
                }
                (CONTENT_LENGTH, FramingError::InvalidContentLength)
            } else {
                continue;
            };
            match HeaderValue::from_bytes(h.value) {
                Ok(v) => {
                    framing.append(header, v);
                }
                // httparse accepts exactly the bytes HeaderValue does, so this cannot happen;
                // refuse rather than skip if it ever does.
                Err(_) => unrepresentable = unrepresentable.or(Some(error)),
            }
        }
        let verdict = match unrepresentable {
            Some(e) => Err(e),
            None => check_request_framing(version, &framing),
        };

        // How hyper frames the body (or refuses the request and closes).
        let body = if let Some(te) = last_te {
            if version == Version::HTTP_11 && ends_with_chunked(te) {
                Body::Chunked
            } else {
                Body::Refused
            }
        } else if let Some(cl) = first_cl {
            match digits(cl) {
                Some(n) if cl_lines_agree => Body::Length(n),
                _ => Body::Refused,
            }
        } else {
            Body::None
        };
        Some(ParsedHead { verdict, body })
    }

    /// Chunked-body bytes: returns how many of `bytes` were used.
    fn feed_chunked(&mut self, mut chunk: Chunk, bytes: &[u8]) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            if let Chunk::Data(left) = chunk {
                let n = usize::try_from(left).map_or(bytes.len() - i, |l| l.min(bytes.len() - i));
                i += n;
                let left = left - n as u64;
                chunk = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            let next = match (chunk, b) {
                (Chunk::Start, b) => hex_digit(b).map(|d| Chunk::Size(u64::from(d))),
                (Chunk::Size(n), b) => match b {
                    b'\t' | b' ' => Some(Chunk::SizeLws(n)),
                    b';' => Some(Chunk::Extension(n)),
                    b'\r' => Some(Chunk::SizeLf(n)),
                    b => hex_digit(b).and_then(|d| {
                        n.checked_mul(16)
                            .and_then(|n| n.checked_add(u64::from(d)))
                            .map(Chunk::Size)
                    }),
                },
                (Chunk::SizeLws(n), b'\t' | b' ') => Some(Chunk::SizeLws(n)),
                (Chunk::SizeLws(n) | Chunk::Extension(n), b';') => Some(Chunk::Extension(n)),
                (Chunk::SizeLws(n) | Chunk::Extension(n), b'\r') => Some(Chunk::SizeLf(n)),
                (Chunk::SizeLws(_), _) => None,
                // hyper refuses a bare LF in an extension.
                (Chunk::Extension(_), b'\n') => None,
                (Chunk::Extension(n), _) => Some(Chunk::Extension(n)),
                (Chunk::SizeLf(0), b'\n') => Some(Chunk::EndCr),
                (Chunk::SizeLf(n), b'\n') => Some(Chunk::Data(n)),
                (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
                (Chunk::DataLf, b'\n') => Some(Chunk::Start),
                (Chunk::EndCr, b'\r') => Some(Chunk::EndLf),
                (Chunk::Trailer, b'\r') => Some(Chunk::TrailerLf),
                (Chunk::EndCr | Chunk::Trailer, _) => Some(Chunk::Trailer),
                (Chunk::TrailerLf, b'\n') => Some(Chunk::EndCr),
                (Chunk::EndLf, b'\n') => {
                    self.start_head();
                    return i;
                }
                (Chunk::SizeLf(_) | Chunk::DataCr | Chunk::DataLf, _) => None,
                (Chunk::TrailerLf | Chunk::EndLf, _) => None,
                (Chunk::Data(_), _) => None, // handled above
            };
            match next {
                Some(c) => chunk = c,
                None => {
                    self.give_up();
                    return bytes.len();
                }
            }
        }
        self.state = State::Chunked(chunk);
        bytes.len()
    }
}

struct ParsedHead {
    verdict: Verdict,
    body: Body,
}

enum Body {
    None,
    Length(u64),
    Chunked,
    /// hyper answers 400 and closes the connection.
    Refused,
}

/// RFC 9110 `tchar` (httparse's method token bytes).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// hyper's `Content-Length` line parse: `1*DIGIT` fitting a u64, nothing else — the same rule
/// as the header check's.
fn digits(value: &[u8]) -> Option<u64> {
    crate::hygiene::parse_content_length(value)
}

/// hyper's `is_chunked_` on one `Transfer-Encoding` line: its last comma-separated element,
/// trimmed, is `chunked` (any case); a line that is not visible ASCII never is.
fn ends_with_chunked(value: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(value) else {
        return false;
    };
    s.is_ascii()
        && s.rsplit(',')
            .next()
            .is_some_and(|e| e.trim().eq_ignore_ascii_case("chunked"))
}

// ------------------------------------------------------------------------------------------ io

pin_project_lite::pin_project! {
    /// An `AsyncRead + AsyncWrite` stream whose read side goes through a [`FramingScanner`]
    /// before the bytes are handed on, so that each request's verdict is in the shared
    /// [`FramingVerdicts`] before hyper parses that request. Writes pass through.
    #[derive(Debug)]
    pub struct ScannedIo<T> {
        #[pin]
        inner: T,
        scanner: FramingScanner,
    }
}

impl<T> ScannedIo<T> {
    /// Wrap `inner` with a default scanner; the verdicts are for the request handler.
    #[cfg(test)]
    pub fn new(inner: T) -> (Self, Arc<FramingVerdicts>) {
        Self::with_config(inner, ScannerConfig::default())
    }

    /// Wrap `inner` with a scanner using `config`.
    pub fn with_config(inner: T, config: ScannerConfig) -> (Self, Arc<FramingVerdicts>) {
        let scanner = FramingScanner::with_config(config);
        let verdicts = scanner.verdicts();
        (Self { inner, scanner }, verdicts)
    }

    /// The wrapped stream.
    #[cfg(test)]
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The scanner (e.g. to see whether it is still active).
    #[cfg(test)]
    pub fn scanner(&self) -> &FramingScanner {
        &self.scanner
    }

    /// The wrapped stream, dropping the scanner.
    #[cfg(test)]
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead> AsyncRead for ScannedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.scanner.is_active() {
            return this.inner.poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let poll = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll
            && let Some(new) = buf.filled().get(before..)
        {
            this.scanner.feed(new);
        }
        poll
    }
}

impl<T: AsyncWrite> AsyncWrite for ScannedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CLTE: Verdict = Err(FramingError::ContentLengthAndTransferEncoding);
    const OK: Verdict = Ok(());

    /// splitmix64: a small deterministic PRNG for split points and generated inputs.
    struct Prng(u64);

    impl Prng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }
    }

    /// What a scanner produced: all verdicts (taken in order), whether it is still active, and
    /// the largest head buffer seen after any feed.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        verdicts: Vec<Verdict>,
        active: bool,
        max_buffered: usize,
    }

    fn run_with(
        config: ScannerConfig,
        input: &[u8],
        mut next_len: impl FnMut() -> usize,
    ) -> Outcome {
        let mut scanner = FramingScanner::with_config(config.clone());
        let verdicts = scanner.verdicts();
        let mut max_buffered = 0;
        let mut rest = input;
        while !rest.is_empty() {
            let n = next_len().clamp(1, rest.len());
            scanner.feed(&rest[..n]);
            rest = &rest[n..];
            max_buffered = max_buffered.max(scanner.buffered_len());
            assert!(scanner.buffered_len() <= config.max_head_size);
        }
        let recorded = verdicts.recorded();
        let mut out = Vec::new();
        while let Some(v) = verdicts.take(out.len() as u64) {
            out.push(v);
        }
        assert_eq!(
            out.len() as u64,
            recorded,
            "every recorded verdict is taken in order"
        );
        assert_eq!(verdicts.pending(), 0);
        Outcome {
            verdicts: out,
            active: scanner.is_active(),
            max_buffered,
        }
    }

    /// Feed `input` whole, byte by byte and in several random splittings; all must agree.
    fn run_all_ways(config: &ScannerConfig, input: &[u8]) -> Outcome {
        let whole = run_with(config.clone(), input, || usize::MAX);
        let mut by_byte = run_with(config.clone(), input, || 1);
        by_byte.max_buffered = whole.max_buffered;
        assert_eq!(by_byte, whole, "byte by byte vs whole: {:?}", lossy(input));
        for seed in 0..8u64 {
            let mut rng = Prng(seed);
            let mut split = run_with(config.clone(), input, || match rng.below(4) {
                0 => 1 + rng.below(3),
                1 => 1 + rng.below(16),
                2 => 1 + rng.below(200),
                _ => 1 + rng.below(5000),
            });
            split.max_buffered = whole.max_buffered;
            assert_eq!(split, whole, "seed {seed} vs whole: {:?}", lossy(input));
        }
        whole
    }

    fn lossy(b: &[u8]) -> String {
        String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned()
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const FAKE_HEAD: &[u8] =
        b"GET /smuggled HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";

    const CHUNKED_HEAD: &[u8] = b"POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";

    fn post_cl(body: &[u8]) -> Vec<u8> {
        let head = format!(
            "POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        cat(&[head.as_bytes(), body])
    }

    fn post_chunked(chunk: &[u8]) -> Vec<u8> {
        let size = format!("{:x}", chunk.len());
        cat(&[
            b"POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            size.as_bytes(),
            b"\r\n",
            chunk,
            b"\r\n0\r\n\r\n",
        ])
    }

    /// (name, input, verdicts, still active afterwards)
    fn cases() -> Vec<(&'static str, Vec<u8>, Vec<Verdict>, bool)> {
        use FramingError::*;
        vec![
            ("plain GET", GET.to_vec(), vec![OK], true),
            ("leading empty lines", cat(&[b"\r\n\n\r\n", GET]), vec![OK], true),
            ("pipelined GETs", cat(&[GET, GET, GET]), vec![OK, OK, OK], true),
            (
                "bare LF line ends",
                b"GET / HTTP/1.1\nHost: a\n\nGET /b HTTP/1.1\n\n".to_vec(),
                vec![OK, OK],
                true,
            ),
            ("no headers", b"GET / HTTP/1.0\r\n\r\n".to_vec(), vec![OK], true),
            ("CL body then next request", cat(&[&post_cl(b"hello world"), GET]), vec![OK, OK], true),
            ("CL 0 then next request", cat(&[&post_cl(b""), GET]), vec![OK, OK], true),
            (
                "CL body containing a head is body",
                cat(&[&post_cl(FAKE_HEAD), GET]),
                vec![OK, OK],
                true,
            ),
            (
                "CL body that is a whole CL+TE request",
                cat(&[&post_cl(&post_cl(b"x")), &post_chunked(b"abc")]),
                vec![OK, OK],
                true,
            ),
            (
                "identical repeated CL",
                cat(&[b"POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello", GET]),
                vec![OK, OK],
                true,
            ),
            (
                "chunked with extensions and trailers",
                cat(&[
                    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                      5;name=val\r\nhello\r\n\
                      A ; q=\"a;b\"\r\n0123456789\r\n\
                      0;last\r\nX-Trailer: 1\r\nY: 2\r\n\r\n",
                    GET,
                ]),
                vec![OK, OK],
                true,
            ),
            (
                "chunk sizes: uppercase hex, leading zeros, spaces",
                cat(&[
                    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                      000A \t \r\n0123456789\r\n00000000\r\n\r\n",
                    GET,
                ]),
                vec![OK, OK],
                true,
            ),
            (
                "chunk data containing a head is body",
                cat(&[&post_chunked(&cat(&[b"\r\n0\r\n\r\n", FAKE_HEAD])), GET]),
                vec![OK, OK],
                true,
            ),
            (
                "CL+TE",
                cat(&[
                    b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                    b"5\r\nhello\r\n0\r\n\r\n",
                    GET,
                ]),
                vec![CLTE, OK],
                true,
            ),
            (
                "TE+CL",
                cat(&[
                    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                    b"5\r\nhello\r\n0\r\n\r\n",
                    GET,
                ]),
                vec![CLTE, OK],
                true,
            ),
            (
                "CL+TE is framed by TE, not by CL",
                cat(&[
                    b"POST / HTTP/1.1\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n",
                    b"0\r\n\r\n",
                    GET,
                    GET,
                ]),
                vec![CLTE, OK, OK],
                true,
            ),
            (
                "CL+TE with odd case names",
                b"POST / HTTP/1.1\r\ncontent-LENGTH: 0\r\nTRANSFER-encoding: CHUNKED\r\n\r\n0\r\n\r\n"
                    .to_vec(),
                vec![CLTE],
                true,
            ),
            (
                "CL+TE as the second request of a keep-alive connection",
                cat(&[
                    GET,
                    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                ]),
                vec![OK, CLTE],
                true,
            ),
            (
                "conflicting CLs",
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
                vec![Err(ConflictingContentLength)],
                false,
            ),
            (
                "conflicting CL list",
                b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhello!".to_vec(),
                vec![Err(ConflictingContentLength)],
                false,
            ),
            (
                "invalid CL",
                b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello".to_vec(),
                vec![Err(InvalidContentLength)],
                false,
            ),
            (
                "gzip, chunked (hyper accepts it, framed as chunked)",
                cat(&[
                    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                    GET,
                ]),
                vec![Err(UnsupportedTransferCoding), OK],
                true,
            ),
            (
                "TE on two lines, chunked last",
                cat(&[
                    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                    GET,
                ]),
                vec![Err(UnsupportedTransferCoding), OK],
                true,
            ),
            (
                "TE on two lines, chunked first (hyper refuses)",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n"
                    .to_vec(),
                vec![Err(TransferEncodingNotChunked)],
                false,
            ),
            (
                "TE gzip (hyper refuses)",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nxx".to_vec(),
                vec![Err(TransferEncodingNotChunked)],
                false,
            ),
            (
                "TE in HTTP/1.0 (hyper refuses)",
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
                vec![Err(TransferEncodingInHttp10)],
                false,
            ),
            (
                "upgrade request not upgraded, then CL+TE",
                cat(&[
                    b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                ]),
                vec![OK, CLTE],
                true,
            ),
            (
                "CONNECT, then a request",
                cat(&[b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", GET]),
                vec![OK, OK],
                true,
            ),
            (
                "upgrade switched to websocket: gives up on the first frame",
                cat(&[
                    b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                    &[0x81, 0x85, 1, 2, 3, 4, b'h', b'e', b'l', b'l', b'o'],
                    FAKE_HEAD,
                ]),
                vec![OK],
                false,
            ),
        ]
    }

    #[test]
    fn scanner_table() {
        let config = ScannerConfig::default();
        for (name, input, want, active) in cases() {
            let got = run_all_ways(&config, &input);
            assert_eq!(got.verdicts, want, "case {name:?}");
            assert_eq!(got.active, active, "case {name:?}");
        }
    }

    #[test]
    fn pipelined_random_sequences() {
        // Cases that leave the scanner active can follow one another on one connection.
        let config = ScannerConfig::default();
        let pool: Vec<_> = cases().into_iter().filter(|c| c.3).collect();
        let mut rng = Prng(42);
        for _ in 0..150 {
            let mut input = Vec::new();
            let mut want = Vec::new();
            for _ in 0..1 + rng.below(8) {
                let (_, bytes, verdicts, _) = &pool[rng.below(pool.len())];
                input.extend_from_slice(bytes);
                want.extend_from_slice(verdicts);
            }
            let got = run_all_ways(&config, &input);
            assert_eq!(got.verdicts, want, "{:?}", lossy(&input));
            assert!(got.active);
        }
    }

    #[test]
    fn gives_up_without_panic() {
        let many_headers: Vec<u8> = cat(&[
            b"GET / HTTP/1.1\r\n",
            &b"X: y\r\n".repeat(DEFAULT_MAX_HEADERS + 1),
            b"\r\n",
        ]);
        let huge_value = cat(&[b"GET / HTTP/1.1\r\nX: ", &vec![b'a'; 100_000], b"\r\n\r\n"]);
        let huge_uri = cat(&[b"GET /", &vec![b'a'; 100_000]]);
        let cases: Vec<(&str, Vec<u8>, Vec<Verdict>)> = vec![
            (
                "TLS client hello",
                vec![0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00],
                vec![],
            ),
            (
                "HTTP/2 preface",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                vec![],
            ),
            ("space first", b" GET / HTTP/1.1\r\n\r\n".to_vec(), vec![]),
            (
                "bad method byte",
                b"GE(T / HTTP/1.1\r\n\r\n".to_vec(),
                vec![],
            ),
            (
                "leading CR without LF",
                b"\rGET / HTTP/1.1\r\n\r\n".to_vec(),
                vec![],
            ),
            (
                "bad version",
                b"GET / HTTP/3.7\r\nHost: a\r\n\r\n".to_vec(),
                vec![],
            ),
            (
                "bare CR in a field",
                b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n".to_vec(),
                vec![],
            ),
            (
                "field without colon",
                b"GET / HTTP/1.1\r\nXY\r\n\r\n".to_vec(),
                vec![],
            ),
            (
                "obs-fold",
                b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n".to_vec(),
                vec![],
            ),
            ("too many headers", many_headers, vec![]),
            ("huge head", huge_value, vec![]),
            ("huge request line", huge_uri, vec![]),
            (
                "invalid chunk size",
                cat(&[CHUNKED_HEAD, b"zz\r\n"]),
                vec![OK],
            ),
            (
                "chunk size overflow",
                cat(&[CHUNKED_HEAD, b"10000000000000000\r\n"]),
                vec![OK],
            ),
            (
                "LF in chunk extension",
                cat(&[CHUNKED_HEAD, b"1;a\nb\r\n"]),
                vec![OK],
            ),
            (
                "no CRLF after chunk data",
                cat(&[CHUNKED_HEAD, b"1\r\nab\r\n"]),
                vec![OK],
            ),
            (
                "bare LF after chunk size",
                cat(&[CHUNKED_HEAD, b"1\nab\r\n"]),
                vec![OK],
            ),
            (
                "garbage after size",
                cat(&[CHUNKED_HEAD, b"1 x\r\n"]),
                vec![OK],
            ),
            (
                "bad end of trailers",
                cat(&[CHUNKED_HEAD, b"0\r\nX: 1\r\rGET"]),
                vec![OK],
            ),
            (
                "bad final CRLF",
                cat(&[CHUNKED_HEAD, b"0\r\n\rX"]),
                vec![OK],
            ),
        ];
        assert!(post_chunked(b"").starts_with(CHUNKED_HEAD));
        let config = ScannerConfig::default();
        for (name, input, want) in cases {
            // A CL+TE request after the failure must not be recorded.
            let input = cat(&[&input, b"\r\n\r\n", &post_cl(b""), FAKE_HEAD]);
            let got = run_all_ways(&config, &input);
            assert_eq!(got.verdicts, want, "case {name:?}");
            assert!(!got.active, "case {name:?}");
        }
    }

    #[test]
    fn head_size_cap_is_exact_and_buffer_bounded() {
        let config = ScannerConfig {
            max_head_size: 100,
            ..ScannerConfig::default()
        };
        let head = |len: usize| {
            let fixed = b"GET / HTTP/1.1\r\nX: \r\n\r\n".len();
            let mut h = b"GET / HTTP/1.1\r\nX: ".to_vec();
            h.extend(std::iter::repeat_n(b'a', len - fixed));
            h.extend_from_slice(b"\r\n\r\n");
            assert_eq!(h.len(), len);
            h
        };
        // Leading empty lines do not count.
        let at_cap = cat(&[b"\r\n\r\n", &head(100), GET]);
        let got = run_all_ways(&config, &at_cap);
        assert_eq!((got.verdicts, got.active), (vec![OK, OK], true));
        let over = cat(&[&head(101), GET]);
        let got = run_all_ways(&config, &over);
        assert_eq!((got.verdicts, got.active), (vec![], false));
        assert!(got.max_buffered <= 100);

        // An endless head, streamed: the buffer never exceeds the cap.
        let endless = vec![b'a'; 1 << 20];
        let got = run_all_ways(&ScannerConfig::default(), &endless);
        assert!(!got.active);
        assert!(got.max_buffered <= DEFAULT_MAX_HEAD_SIZE);

        // Endless trailers and chunk extensions are followed without buffering anything.
        let trailers = cat(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
            &b"X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(20_000),
        ]);
        let got = run_all_ways(&ScannerConfig::default(), &trailers);
        assert_eq!(
            (got.verdicts, got.active, got.max_buffered),
            (vec![OK], true, 0)
        );
    }

    #[test]
    fn fuzzed_streams_agree_across_splits() {
        const PIECES: &[&[u8]] = &[
            b"GET",
            b"POST",
            b" ",
            b"/",
            b" HTTP/1.1",
            b" HTTP/1.0",
            b"\r\n",
            b"\n",
            b"\r",
            b"Content-Length: ",
            b"Transfer-Encoding: ",
            b"chunked",
            b"gzip, ",
            b": ",
            b"0",
            b"5",
            b"a",
            b"F",
            b";x",
            b"\t",
            b"Host: h",
            b"\r\n\r\n",
            b"\x00",
            b"\xff",
        ];
        let config = ScannerConfig {
            max_head_size: 256,
            ..ScannerConfig::default()
        };
        let mut rng = Prng(7);
        let mut recorded_some = 0;
        for _ in 0..400 {
            let mut input = Vec::new();
            // Start most streams with a valid request so that the body states get exercised.
            if rng.below(3) > 0 {
                input.extend_from_slice(
                    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                );
            }
            for _ in 0..rng.below(120) {
                input.extend_from_slice(PIECES[rng.below(PIECES.len())]);
            }
            let got = run_all_ways(&config, &input);
            assert!(got.max_buffered <= 256);
            recorded_some += usize::from(!got.verdicts.is_empty());
        }
        assert!(recorded_some > 100, "{recorded_some}");
    }

    #[test]
    fn verdict_queue() {
        let mut scanner = FramingScanner::new();
        let verdicts = scanner.verdicts();
        assert_eq!(verdicts.take(0), None);
        scanner.feed(&cat(&[
            GET,
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            GET,
        ]));
        assert_eq!((verdicts.recorded(), verdicts.pending()), (3, 3));
        // Out of order is allowed; each verdict is given once.
        assert_eq!(verdicts.take(1), Some(CLTE));
        assert_eq!(verdicts.take(1), None);
        assert_eq!(verdicts.pending(), 2);
        assert_eq!(verdicts.take(0), Some(OK));
        assert_eq!(verdicts.take(0), None);
        assert_eq!(verdicts.take(3), None, "not seen yet");
        assert_eq!(verdicts.take(2), Some(OK));
        assert_eq!(verdicts.pending(), 0);
        // Everything taken: nothing is held.
        assert!(verdicts.lock().slots.is_empty());
        scanner.feed(GET);
        assert_eq!(verdicts.take(3), Some(OK));
        assert_eq!(verdicts.take(u64::MAX), None);
    }

    #[test]
    fn pending_verdicts_are_capped() {
        let config = ScannerConfig {
            max_pending_verdicts: 3,
            ..ScannerConfig::default()
        };
        let mut scanner = FramingScanner::with_config(config);
        let verdicts = scanner.verdicts();
        scanner.feed(&cat(&[GET, GET, GET]));
        assert!(scanner.is_active());
        scanner.feed(GET);
        assert!(!scanner.is_active(), "a 4th pending verdict stops the scan");
        assert_eq!(verdicts.recorded(), 3);
        // Taking does not restart a scanner that gave up.
        assert_eq!(verdicts.take(0), Some(OK));
        scanner.feed(GET);
        assert_eq!(verdicts.recorded(), 3);
        assert_eq!(verdicts.take(3), None);
    }

    #[test]
    fn parser_options_follow_config() {
        let input = cat(&[b"GET  /  HTTP/1.1\r\n\r\n", GET]);
        let strict = run_all_ways(&ScannerConfig::default(), &input);
        assert_eq!((strict.verdicts, strict.active), (vec![], false));
        let lenient = ScannerConfig {
            allow_multiple_spaces_in_request_line_delimiters: true,
            ..ScannerConfig::default()
        };
        assert_eq!(run_all_ways(&lenient, &input).verdicts, vec![OK, OK]);

        let input = cat(&[
            b"POST / HTTP/1.1\r\nBad Name: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            GET,
        ]);
        let strict = run_all_ways(&ScannerConfig::default(), &input);
        assert_eq!((strict.verdicts, strict.active), (vec![], false));
        let ignoring = ScannerConfig {
            ignore_invalid_headers: true,
            ..ScannerConfig::default()
        };
        assert_eq!(run_all_ways(&ignoring, &input).verdicts, vec![CLTE, OK]);
    }

    #[test]
    fn helpers_match_hyper() {
        assert_eq!(digits(b"0"), Some(0));
        assert_eq!(digits(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"+1",
            b"1 ",
            b"0x1",
            b"1,1",
        ] {
            assert_eq!(digits(bad), None, "{bad:?}");
        }
        for yes in [
            &b"chunked"[..],
            b"CHUNKED",
            b"gzip, chunked",
            b"gzip ,chunked ",
            b"x,chunked",
        ] {
            assert!(ends_with_chunked(yes), "{yes:?}");
        }
        for no in [
            &b""[..],
            b"chunked,",
            b"chunked, gzip",
            b"chunked;a=1",
            b"\xffchunked, chunked",
        ] {
            assert!(!ends_with_chunked(no), "{no:?}");
        }
        for b in (0..=255u8).filter(|b| !matches!(b, b'\r' | b'\n')) {
            let mut req = httparse::Request::new(&mut []);
            let tchar_ok = !matches!(req.parse(&[b, b' ']), Err(httparse::Error::Token));
            assert_eq!(is_tchar(b), tchar_ok, "byte {b}");
        }
    }

    // ------------------------------------------------------------------------------- ScannedIo

    #[tokio::test]
    async fn scanned_io_records_before_returning_bytes() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut io, verdicts) = ScannedIo::new(server);
        let clte: &[u8] =
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let sent = cat(&[GET, clte]);
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                client.write_all(&sent).await.unwrap();
                client
            })
        };
        // Read exactly the first head: its verdict is there, the second one's is not.
        let mut first = vec![0; GET.len()];
        io.read_exact(&mut first).await.unwrap();
        assert_eq!(first, GET);
        assert_eq!(verdicts.recorded(), 1);
        assert_eq!(verdicts.take(0), Some(OK));
        assert_eq!(verdicts.take(1), None);
        let mut rest = vec![0; clte.len()];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, clte, "bytes pass through unchanged");
        assert_eq!(verdicts.take(1), Some(CLTE));

        // Writes pass through.
        let mut client = writer.await.unwrap();
        io.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.is_write_vectored(), io.get_ref().is_write_vectored());
        let n = io
            .write_vectored(&[IoSlice::new(b"ab"), IoSlice::new(b"cd")])
            .await
            .unwrap();
        io.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        let mut want = b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec();
        want.extend_from_slice(&b"abcd"[..n]);
        assert_eq!(answer, want);
    }

    #[tokio::test]
    async fn scanned_io_passes_through_after_giving_up() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut io, verdicts) = ScannedIo::new(server);
        let tls: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        client.write_all(tls).await.unwrap();
        client.write_all(FAKE_HEAD).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, cat(&[tls, FAKE_HEAD]));
        assert!(!io.scanner().is_active());
        assert_eq!(verdicts.recorded(), 0);
        let _inner: tokio::io::DuplexStream = io.into_inner();
    }
}
