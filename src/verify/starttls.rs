//! The plaintext exchanges that turn a connection into a TLS one, for
//! `verify.starttls`: SMTP (RFC 3207), IMAP (RFC 9051 §6.2.1, RFC 3501),
//! POP3 (RFC 2595 §4) and PostgreSQL's `SSLRequest`. Each step checks the
//! server's answer; an error names the protocol, the endpoint and the step,
//! e.g. `smtp 127.0.0.1:2525: server does not advertise STARTTLS`.
//!
//! The caller bounds the whole exchange with its deadline and reads `step`
//! (what was being waited for) when it runs out. Lines are read up to
//! [`MAX_LINE`] bytes and replies up to [`MAX_LINES`] lines, so a server
//! cannot make certherd buffer without end. Nothing of the server's reply
//! beyond the go-ahead is consumed: the TLS handshake starts right after it.

use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::Starttls;

/// The longest line read from a server (SMTP allows 512, IMAP servers send
/// long capability lists).
pub const MAX_LINE: u64 = 8192;
/// The most lines one reply may have.
pub const MAX_LINES: usize = 200;

/// Run the exchange of `proto` on `tcp`; afterwards the server expects a
/// TLS ClientHello. `step` is kept up to date with what is awaited.
pub async fn negotiate(
    proto: Starttls,
    connect: &str,
    tcp: &mut TcpStream,
    step: &Mutex<&'static str>,
) -> Result<(), String> {
    let local = tcp.local_addr().ok();
    let mut talk = Talk {
        proto,
        connect,
        step,
        io: BufReader::new(tcp),
    };
    match proto {
        Starttls::Smtp => talk.smtp(local).await?,
        Starttls::Imap => talk.imap().await?,
        Starttls::Pop3 => talk.pop3().await?,
        Starttls::Postgres => talk.postgres().await?,
    }
    if !talk.io.buffer().is_empty() {
        return Err(talk.error("the server sent data after agreeing to start TLS"));
    }
    Ok(())
}

struct Talk<'a, 'b> {
    proto: Starttls,
    connect: &'a str,
    step: &'a Mutex<&'static str>,
    io: BufReader<&'b mut TcpStream>,
}

impl Talk<'_, '_> {
    fn error(&self, what: impl std::fmt::Display) -> String {
        format!("{} {}: {what}", self.proto.as_str(), self.connect)
    }

    fn at(&self, step: &'static str) {
        *self.step.lock().expect("step") = step;
    }

    async fn send(&mut self, line: &str) -> Result<(), String> {
        self.io
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| self.error(format_args!("sending {line}: {e}")))
    }

    /// One line without its line ending; `what` names it in errors.
    async fn line(&mut self, what: &str) -> Result<String, String> {
        let mut buf = Vec::new();
        let n = (&mut self.io)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| self.error(format_args!("reading {what}: {e}")))?;
        if n == 0 {
            return Err(self.error(format_args!(
                "the server closed the connection before {what}"
            )));
        }
        if !buf.ends_with(b"\n") {
            return Err(self.error(format_args!("{what}: a line longer than {MAX_LINE} bytes")));
        }
        let text = String::from_utf8_lossy(&buf);
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    }

    /// An SMTP reply (RFC 5321 §4.2): its code and the text of every line.
    async fn smtp_reply(&mut self, what: &str) -> Result<(u16, Vec<String>), String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line(what).await?;
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|_| matches!(line.as_bytes().get(3), None | Some(b' ' | b'-')));
            let Some(code) = code else {
                return Err(self.error(format_args!("{what}: not an SMTP reply: {}", shown(&line))));
            };
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or_default().to_string());
            if last {
                return Ok((code, lines));
            }
            if lines.len() >= MAX_LINES {
                return Err(self.error(format_args!("{what}: more than {MAX_LINES} lines")));
            }
        }
    }

    async fn smtp(&mut self, local: Option<std::net::SocketAddr>) -> Result<(), String> {
        self.at("reading the greeting");
        let (code, text) = self.smtp_reply("the greeting").await?;
        if code != 220 {
            return Err(self.error(format_args!(
                "the greeting is {code} {}, not 220",
                shown(&text.join(" / "))
            )));
        }
        // RFC 5321 §4.1.4: an address literal when the client has no name.
        let me = match local.map(|a| a.ip()) {
            Some(std::net::IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
            Some(ip) => format!("[{ip}]"),
            None => "[127.0.0.1]".to_string(),
        };
        self.send(&format!("EHLO {me}")).await?;
        self.at("waiting for the EHLO reply");
        let (code, text) = self.smtp_reply("the EHLO reply").await?;
        if code != 250 {
            return Err(self.error(format_args!(
                "EHLO was answered {code} {}",
                shown(&text.join(" / "))
            )));
        }
        let offered = text.iter().skip(1).any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("STARTTLS"))
        });
        if !offered {
            return Err(self.error("server does not advertise STARTTLS"));
        }
        self.send("STARTTLS").await?;
        self.at("waiting for the STARTTLS reply");
        let (code, text) = self.smtp_reply("the STARTTLS reply").await?;
        if code != 220 {
            return Err(self.error(format_args!(
                "STARTTLS was answered {code} {}",
                shown(&text.join(" / "))
            )));
        }
        Ok(())
    }

    /// Untagged lines until the line tagged `tag`; returns (untagged, tagged).
    async fn imap_reply(&mut self, tag: &str, what: &str) -> Result<(Vec<String>, String), String> {
        let mut untagged = Vec::new();
        loop {
            let line = self.line(what).await?;
            if let Some(rest) = line.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
                return Ok((untagged, rest.to_string()));
            }
            untagged.push(line);
            if untagged.len() >= MAX_LINES {
                return Err(self.error(format_args!("{what}: more than {MAX_LINES} lines")));
            }
        }
    }

    async fn imap(&mut self) -> Result<(), String> {
        self.at("reading the greeting");
        let greeting = self.line("the greeting").await?;
        if !starts_with_ignore_case(&greeting, "* OK") {
            return Err(self.error(format_args!(
                "the greeting is {}, not * OK",
                shown(&greeting)
            )));
        }
        self.send("a1 CAPABILITY").await?;
        self.at("waiting for the CAPABILITY reply");
        let (untagged, done) = self.imap_reply("a1", "the CAPABILITY reply").await?;
        if !starts_with_ignore_case(&done, "OK") {
            return Err(self.error(format_args!("CAPABILITY was answered {}", shown(&done))));
        }
        let offered = untagged
            .iter()
            .filter(|l| starts_with_ignore_case(l, "* CAPABILITY "))
            .flat_map(|l| l.split_whitespace().skip(2))
            .any(|c| c.eq_ignore_ascii_case("STARTTLS"));
        if !offered {
            return Err(self.error("server does not advertise STARTTLS"));
        }
        self.send("a2 STARTTLS").await?;
        self.at("waiting for the STARTTLS reply");
        let (_, done) = self.imap_reply("a2", "the STARTTLS reply").await?;
        if !starts_with_ignore_case(&done, "OK") {
            return Err(self.error(format_args!("STARTTLS was answered {}", shown(&done))));
        }
        Ok(())
    }

    async fn pop3(&mut self) -> Result<(), String> {
        self.at("reading the greeting");
        let greeting = self.line("the greeting").await?;
        if !greeting.starts_with("+OK") {
            return Err(self.error(format_args!(
                "the greeting is {}, not +OK",
                shown(&greeting)
            )));
        }
        // RFC 2449 CAPA; a server without it may still take STLS.
        self.send("CAPA").await?;
        self.at("waiting for the CAPA reply");
        let first = self.line("the CAPA reply").await?;
        if first.starts_with("+OK") {
            let mut offered = false;
            let mut lines = 0;
            loop {
                let line = self.line("the CAPA reply").await?;
                if line == "." {
                    break;
                }
                offered |= line
                    .split_whitespace()
                    .next()
                    .is_some_and(|k| k.eq_ignore_ascii_case("STLS"));
                lines += 1;
                if lines >= MAX_LINES {
                    return Err(
                        self.error(format_args!("the CAPA reply: more than {MAX_LINES} lines"))
                    );
                }
            }
            if !offered {
                return Err(self.error("server does not advertise STLS"));
            }
        }
        self.send("STLS").await?;
        self.at("waiting for the STLS reply");
        let reply = self.line("the STLS reply").await?;
        if !reply.starts_with("+OK") {
            return Err(self.error(format_args!("STLS was answered {}", shown(&reply))));
        }
        Ok(())
    }

    /// PostgreSQL's SSLRequest: length 8, code 80877103; one byte back.
    async fn postgres(&mut self) -> Result<(), String> {
        const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        self.io
            .get_mut()
            .write_all(&SSL_REQUEST)
            .await
            .map_err(|e| self.error(format_args!("sending SSLRequest: {e}")))?;
        self.at("waiting for the SSLRequest answer");
        let mut answer = [0u8; 1];
        self.io
            .read_exact(&mut answer)
            .await
            .map_err(|e| self.error(format_args!("reading the SSLRequest answer: {e}")))?;
        match answer[0] {
            b'S' => Ok(()),
            b'N' => Err(self.error("server does not accept SSL (it answered N to SSLRequest)")),
            other => Err(self.error(format_args!(
                "unexpected answer 0x{other:02x} to SSLRequest"
            ))),
        }
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// A server's words in a message: quoted, at most 200 characters.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(200).collect();
    if cut.len() < s.len() {
        format!("{:?}…", cut)
    } else {
        format!("{cut:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A scripted server: for each (expect, send), read one line that must
    /// equal `expect` (unless empty), then send `send`. Returns what it read.
    async fn scripted(
        proto: Starttls,
        script: &'static [(&'static str, &'static str)],
    ) -> Result<(), String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let mut sock = BufReader::new(sock);
            for (expect, send) in script {
                if !expect.is_empty() {
                    let mut line = String::new();
                    sock.read_line(&mut line).await.unwrap();
                    assert_eq!(line.trim_end(), *expect);
                }
                sock.get_mut().write_all(send.as_bytes()).await.unwrap();
            }
        });
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        let step = Mutex::new("");
        let r = negotiate(proto, &addr, &mut tcp, &step).await;
        drop(tcp);
        server.await.unwrap();
        r.map_err(|e| e.replace(&addr, "ADDR"))
    }

    #[tokio::test]
    async fn smtp_multi_line_greeting_and_ehlo() {
        scripted(
            Starttls::Smtp,
            &[
                ("", "220-mail.test ESMTP\r\n220 second line\r\n"),
                (
                    "EHLO [127.0.0.1]",
                    "250-mail.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
                ),
                ("STARTTLS", "220 2.0.0 go ahead\r\n"),
            ],
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn smtp_without_starttls_is_named() {
        let err = scripted(
            Starttls::Smtp,
            &[
                ("", "220 mail.test ESMTP\r\n"),
                ("EHLO [127.0.0.1]", "250-mail.test\r\n250 8BITMIME\r\n"),
            ],
        )
        .await
        .unwrap_err();
        assert_eq!(err, "smtp ADDR: server does not advertise STARTTLS");
    }

    #[tokio::test]
    async fn smtp_refusals_quote_the_server() {
        let err = scripted(Starttls::Smtp, &[("", "554 go away\r\n")])
            .await
            .unwrap_err();
        assert_eq!(err, "smtp ADDR: the greeting is 554 \"go away\", not 220");
        let err = scripted(
            Starttls::Smtp,
            &[
                ("", "220 hi\r\n"),
                ("EHLO [127.0.0.1]", "250-x\r\n250 STARTTLS\r\n"),
                ("STARTTLS", "454 4.7.0 TLS not available\r\n"),
            ],
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            "smtp ADDR: STARTTLS was answered 454 \"4.7.0 TLS not available\""
        );
    }

    #[tokio::test]
    async fn imap_and_pop3() {
        scripted(
            Starttls::Imap,
            &[
                ("", "* OK [CAPABILITY IMAP4rev1] ready\r\n"),
                (
                    "a1 CAPABILITY",
                    "* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\na1 OK done\r\n",
                ),
                ("a2 STARTTLS", "a2 OK Begin TLS negotiation now\r\n"),
            ],
        )
        .await
        .unwrap();
        let err = scripted(
            Starttls::Imap,
            &[
                ("", "* OK ready\r\n"),
                ("a1 CAPABILITY", "* CAPABILITY IMAP4rev1\r\na1 OK done\r\n"),
            ],
        )
        .await
        .unwrap_err();
        assert_eq!(err, "imap ADDR: server does not advertise STARTTLS");
        scripted(
            Starttls::Pop3,
            &[
                ("", "+OK ready\r\n"),
                ("CAPA", "+OK\r\nUSER\r\nSTLS\r\n.\r\n"),
                ("STLS", "+OK Begin TLS\r\n"),
            ],
        )
        .await
        .unwrap();
        let err = scripted(
            Starttls::Pop3,
            &[("", "+OK ready\r\n"), ("CAPA", "+OK\r\nUSER\r\n.\r\n")],
        )
        .await
        .unwrap_err();
        assert_eq!(err, "pop3 ADDR: server does not advertise STLS");
    }

    #[tokio::test]
    async fn a_closed_connection_names_the_step() {
        let err = scripted(Starttls::Pop3, &[("", "+OK ready\r\n"), ("CAPA", "")])
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "pop3 ADDR: the server closed the connection before the CAPA reply"
        );
    }

    #[tokio::test]
    async fn postgres_ssl_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            for answer in [b"S", b"N"] {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut req = [0u8; 8];
                sock.read_exact(&mut req).await.unwrap();
                assert_eq!(req, [0, 0, 0, 8, 4, 210, 22, 47]);
                sock.write_all(answer).await.unwrap();
            }
        });
        let step = Mutex::new("");
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        negotiate(Starttls::Postgres, &addr, &mut tcp, &step)
            .await
            .unwrap();
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        let err = negotiate(Starttls::Postgres, &addr, &mut tcp, &step)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            format!("postgres {addr}: server does not accept SSL (it answered N to SSLRequest)")
        );
        server.await.unwrap();
    }
}
