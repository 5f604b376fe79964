//! Which answers a Postgres connection still owes its client, read from
//! the protocol's framing alone.
//!
//! Every message after the startup one is a type byte and a big-endian
//! 4-byte length that counts itself; the client's first messages (startup,
//! SSL or GSS request, cancel request) have no type byte. Each simple query
//! (`Q`) and each `Sync` (`S`) the client sends is answered, after whatever
//! else, by exactly one `ReadyForQuery` (`Z`); so is the startup message,
//! once authentication is over. An SSL or GSS encryption request is
//! answered by one unframed byte. [`Conversation`] counts them: the server
//! owes something while a `ReadyForQuery` or an encryption answer is due,
//! or while it stopped in the middle of a message.
//!
//! Bytes that break the framing (a length below its own size) end the
//! counting for good: from then on the server owes an answer from each
//! write until it next sends anything.

/// A stream of messages, cut anywhere: where the next header starts.
#[derive(Debug, Default, Clone)]
struct Framing {
    header: [u8; 8],
    /// Bytes of the current header seen so far.
    have: usize,
    /// Bytes of the current message's body not seen yet.
    body_left: usize,
}

impl Framing {
    fn mid_message(&self) -> bool {
        self.have > 0 || self.body_left > 0
    }

    /// Takes from `bytes` the rest of the current body, or header bytes
    /// until the header has `size`; returns the header when it completed,
    /// and what is left.
    fn take<'a>(&mut self, size: usize, bytes: &'a [u8]) -> (Option<[u8; 8]>, &'a [u8]) {
        if self.body_left > 0 {
            let n = self.body_left.min(bytes.len());
            self.body_left -= n;
            return (None, &bytes[n..]);
        }
        let n = (size - self.have).min(bytes.len());
        self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
        self.have += n;
        if self.have < size {
            return (None, &bytes[n..]);
        }
        self.have = 0;
        (Some(self.header), &bytes[n..])
    }
}

/// The request codes of the client's untyped messages.
const SSL_REQUEST: u32 = 80_877_103;
const GSS_ENCRYPTION_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// What a connection's client sent and its server answered, as far as the
/// answers still due.
#[derive(Debug, Clone)]
pub struct Conversation {
    sent: Framing,
    received: Framing,
    /// The client's next message is untyped (none sent but encryption
    /// requests so far).
    starting: bool,
    /// Unframed one-byte answers (to encryption requests) due.
    bytes_due: u32,
    /// `ReadyForQuery` messages due.
    ready_due: u64,
    /// The framing broke: counting stopped.
    lost: bool,
    /// Once lost: something was sent and nothing received since.
    unanswered: bool,
}

impl Default for Conversation {
    fn default() -> Self {
        Conversation {
            sent: Framing::default(),
            received: Framing::default(),
            starting: true,
            bytes_due: 0,
            ready_due: 0,
            lost: false,
            unanswered: false,
        }
    }
}

impl Conversation {
    /// Whether the server owes the client an answer, or the rest of one.
    pub fn owed(&self) -> bool {
        if self.lost {
            return self.unanswered;
        }
        self.ready_due > 0 || self.bytes_due > 0 || self.received.mid_message()
    }

    /// Whether the framing broke and answers are no longer counted.
    #[cfg(test)]
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// Bytes the client sent, in order.
    pub fn sent(&mut self, mut bytes: &[u8]) {
        if !bytes.is_empty() {
            self.unanswered = true;
        }
        while !bytes.is_empty() && !self.lost {
            let size = if self.starting { 8 } else { 5 };
            let (header, rest) = self.sent.take(size, bytes);
            bytes = rest;
            if let Some(header) = header {
                self.client_message(&header);
            }
        }
    }

    /// Bytes the server sent, in order.
    pub fn received(&mut self, mut bytes: &[u8]) {
        if !bytes.is_empty() {
            self.unanswered = false;
        }
        while !bytes.is_empty() && !self.lost {
            if self.bytes_due > 0 && !self.received.mid_message() {
                self.bytes_due -= 1;
                bytes = &bytes[1..];
                continue;
            }
            let (header, rest) = self.received.take(5, bytes);
            bytes = rest;
            if let Some(header) = header {
                self.server_message(&header);
            }
        }
    }

    fn client_message(&mut self, header: &[u8; 8]) {
        if self.starting {
            let length = be_u32(&header[0..4]);
            let code = be_u32(&header[4..8]);
            let Some(body) = (length as usize).checked_sub(8) else {
                return self.lose();
            };
            match code {
                SSL_REQUEST | GSS_ENCRYPTION_REQUEST => self.bytes_due += 1,
                CANCEL_REQUEST => {}
                _ => {
                    // The startup message: answered by a ReadyForQuery
                    // once authentication is done.
                    self.starting = false;
                    self.ready_due += 1;
                }
            }
            self.sent.body_left = body;
            return;
        }
        let Some(body) = (be_u32(&header[1..5]) as usize).checked_sub(4) else {
            return self.lose();
        };
        if matches!(header[0], b'Q' | b'S') {
            self.ready_due += 1;
        }
        self.sent.body_left = body;
    }

    fn server_message(&mut self, header: &[u8; 8]) {
        let Some(body) = (be_u32(&header[1..5]) as usize).checked_sub(4) else {
            return self.lose();
        };
        if header[0] == b'Z' {
            self.ready_due = self.ready_due.saturating_sub(1);
        }
        self.received.body_left = body;
    }

    fn lose(&mut self) {
        self.lost = true;
        self.unanswered = true;
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(bytes);
    u32::from_be_bytes(word)
}

#[cfg(test)]
pub(crate) mod messages {
    //! Protocol messages, as the tests of this module and of
    //! [`super::super::deadline`] need them.

    fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut message = vec![kind];
        message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        message.extend_from_slice(body);
        message
    }

    fn untyped(code: u32, body: &[u8]) -> Vec<u8> {
        let mut message = (body.len() as u32 + 8).to_be_bytes().to_vec();
        message.extend_from_slice(&code.to_be_bytes());
        message.extend_from_slice(body);
        message
    }

    pub fn ssl_request() -> Vec<u8> {
        untyped(super::SSL_REQUEST, b"")
    }

    pub fn startup() -> Vec<u8> {
        untyped(196_608, b"user\0sync\0\0")
    }

    pub fn query(sql: &str) -> Vec<u8> {
        typed(b'Q', format!("{sql}\0").as_bytes())
    }

    /// Parse, bind, execute and sync: one extended-protocol round.
    pub fn extended(sql: &str) -> Vec<u8> {
        let mut round = typed(b'P', format!("\0{sql}\0\0\0").as_bytes());
        round.extend(typed(b'B', b"\0\0\0\0\0\0\0\0"));
        round.extend(typed(b'E', b"\0\0\0\0\0"));
        round.extend(typed(b'S', b""));
        round
    }

    pub fn authentication_ok() -> Vec<u8> {
        typed(b'R', &0u32.to_be_bytes())
    }

    pub fn row(value: &[u8]) -> Vec<u8> {
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(value);
        typed(b'D', &body)
    }

    pub fn command_complete() -> Vec<u8> {
        typed(b'C', b"SELECT 1\0")
    }

    pub fn notification() -> Vec<u8> {
        typed(b'A', b"\0\0\0\x01channel\0payload\0")
    }

    pub fn ready() -> Vec<u8> {
        typed(b'Z', b"I")
    }

    /// A complete answer to one query or sync, rows of `value`.
    pub fn answer(value: &[u8]) -> Vec<u8> {
        let mut answer = row(value);
        answer.extend(command_complete());
        answer.extend(ready());
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::messages::*;
    use super::*;
    use proptest::prelude::*;

    fn started() -> Conversation {
        let mut conversation = Conversation::default();
        conversation.sent(&startup());
        assert!(conversation.owed(), "the startup is answered");
        conversation.received(&authentication_ok());
        conversation.received(&ready());
        assert!(!conversation.owed(), "ready for queries");
        conversation
    }

    #[test]
    fn a_query_is_owed_until_its_ready_for_query_arrives() {
        let mut conversation = started();
        conversation.sent(&query("SELECT 1"));
        assert!(conversation.owed());
        conversation.received(&row(b"1"));
        conversation.received(&command_complete());
        assert!(conversation.owed(), "rows are not the end of the answer");
        conversation.received(&ready());
        assert!(!conversation.owed());
    }

    #[test]
    fn a_pipelined_request_stays_owed_after_the_first_is_answered() {
        let mut conversation = started();
        conversation.sent(&extended("SELECT 1"));
        conversation.sent(&extended("SELECT 2"));
        conversation.received(&answer(b"1"));
        assert!(conversation.owed(), "the second sync is unanswered");
        conversation.received(&answer(b"2"));
        assert!(!conversation.owed());
    }

    #[test]
    fn an_answer_cut_in_the_middle_of_a_message_is_owed_even_without_requests() {
        let mut conversation = started();
        let notification = notification();
        conversation.received(&notification[..3]);
        assert!(conversation.owed(), "half a header");
        conversation.received(&notification[3..7]);
        assert!(conversation.owed(), "half a body");
        conversation.received(&notification[7..]);
        assert!(!conversation.owed(), "a whole notification owes nothing");
    }

    #[test]
    fn an_encryption_request_is_answered_by_one_unframed_byte() {
        let mut conversation = Conversation::default();
        conversation.sent(&ssl_request());
        assert!(conversation.owed());
        conversation.received(b"N");
        assert!(!conversation.owed(), "refused: plain text from here");
        conversation.sent(&startup());
        conversation.received(&authentication_ok());
        assert!(conversation.owed());
        conversation.received(&ready());
        assert!(!conversation.owed());
        conversation.sent(&query("SELECT 1"));
        conversation.received(&answer(b"1"));
        assert!(!conversation.owed());
    }

    #[test]
    fn a_length_shorter_than_itself_stops_the_counting_and_falls_back_to_any_answer() {
        let mut conversation = started();
        conversation.received(&[b'D', 0, 0, 0, 2]);
        assert!(conversation.lost());
        conversation.sent(&query("SELECT 1"));
        assert!(conversation.owed());
        conversation.received(b"x");
        assert!(!conversation.owed(), "anything received answers");
    }

    /// A stream of whole messages, each side's cut at arbitrary points.
    fn cuts(total: usize) -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(0..=total, 0..8).prop_map(|mut cuts| {
            cuts.sort_unstable();
            cuts
        })
    }

    fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        let mut from = 0;
        for &cut in cuts {
            pieces.push(&bytes[from..cut]);
            from = cut;
        }
        pieces.push(&bytes[from..]);
        pieces
    }

    proptest! {
        #[test]
        fn any_bytes_are_taken_without_a_panic(
            sent in proptest::collection::vec(any::<u8>(), 0..200),
            received in proptest::collection::vec(any::<u8>(), 0..200),
            split in 0usize..200,
        ) {
            let mut conversation = Conversation::default();
            let split = split.min(sent.len());
            conversation.sent(&sent[..split]);
            conversation.received(&received);
            conversation.sent(&sent[split..]);
            let _ = conversation.owed();
        }

        #[test]
        fn where_the_bytes_are_cut_does_not_change_what_is_owed(
            rounds in 1usize..6,
            sent_cuts in cuts(200),
            received_cuts in cuts(200),
        ) {
            let mut requests = Vec::new();
            let mut answers = Vec::new();
            for round in 0..rounds {
                requests.extend(extended(&format!("SELECT {round}")));
                answers.extend(answer(&vec![b'x'; round * 7]));
            }
            let sent_cuts: Vec<usize> = sent_cuts.into_iter().map(|c| c.min(requests.len())).collect();
            let received_cuts: Vec<usize> =
                received_cuts.into_iter().map(|c| c.min(answers.len())).collect();
            let mut conversation = started();
            for piece in pieces(&requests, &sent_cuts) {
                conversation.sent(piece);
            }
            prop_assert!(conversation.owed());
            let received = pieces(&answers, &received_cuts);
            let last = received.iter().rposition(|piece| !piece.is_empty());
            for (index, piece) in received.iter().enumerate() {
                conversation.received(piece);
                if Some(index) < last {
                    prop_assert!(conversation.owed(), "owed until the last ready for query");
                }
            }
            prop_assert!(!conversation.owed());
        }
    }
}
