//! The replies a client is owed, in command order: the first few kept inside the relay itself, so
//! that the common turn (a handful of pipelined commands) reads and writes no memory of its own.
//! A queue on the heap was a cache miss at almost every reply with hundreds of sessions per worker.

use std::collections::VecDeque;

/// Entries kept inline: a pipelined MAIL, a few RCPTs and DATA.
const INLINE: usize = 8;

/// A reply the client is owed.
#[derive(Debug, PartialEq, Eq)]
pub enum Owed<E> {
    /// The backend's reply to this kind of command.
    Backend(E),
    /// A reply mxgate wrote itself, held back until the backend replies before it have gone out.
    Local(Vec<u8>),
}

/// An entry as stored: a local reply's text waits in a queue of its own.
#[derive(Debug, Clone, Copy)]
enum Slot<E> {
    Backend(E),
    Local,
}

/// First in, first out; the oldest [`INLINE`] entries inline, the rest after them on the heap.
#[derive(Debug)]
pub struct OwedReplies<E: Copy> {
    /// `len` entries from `head`, wrapping; `head` goes back to 0 whenever the queue empties, so
    /// that a session's entries stay in the same few bytes.
    inline: [Option<Slot<E>>; INLINE],
    head: u8,
    len: u8,
    /// Entries after the inline ones, when more than [`INLINE`] are owed.
    spill: VecDeque<Slot<E>>,
    /// The texts of the local replies, in order.
    texts: VecDeque<Vec<u8>>,
}

impl<E: Copy> Default for OwedReplies<E> {
    fn default() -> Self {
        Self {
            inline: [None; INLINE],
            head: 0,
            len: 0,
            spill: VecDeque::new(),
            texts: VecDeque::new(),
        }
    }
}

impl<E: Copy> OwedReplies<E> {
    pub fn len(&self) -> usize {
        usize::from(self.len) + self.spill.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push_backend(&mut self, expect: E) {
        self.push(Slot::Backend(expect));
    }

    pub fn push_local(&mut self, text: Vec<u8>) {
        self.texts.push_back(text);
        self.push(Slot::Local);
    }

    pub fn pop_front(&mut self) -> Option<Owed<E>> {
        if self.len == 0 {
            return None;
        }
        let at = usize::from(self.head);
        let slot = self.inline[at].take().expect("an entry within len");
        self.len -= 1;
        self.head = ((at + 1) % INLINE) as u8;
        if let Some(next) = self.spill.pop_front() {
            self.put_last(next);
        } else if self.len == 0 {
            self.head = 0;
        }
        Some(match slot {
            Slot::Backend(expect) => Owed::Backend(expect),
            Slot::Local => Owed::Local(self.texts.pop_front().expect("a text per local entry")),
        })
    }

    /// Whether the oldest entry is a reply of mxgate's own.
    pub fn front_is_local(&self) -> bool {
        self.len > 0 && matches!(self.inline[usize::from(self.head)], Some(Slot::Local))
    }

    /// Whether every entry is a reply of mxgate's own (true when there is none).
    pub fn all_local(&self) -> bool {
        self.texts.len() == self.len()
    }

    pub fn clear(&mut self) {
        self.inline = [None; INLINE];
        self.head = 0;
        self.len = 0;
        self.spill.clear();
        self.texts.clear();
    }

    fn push(&mut self, slot: Slot<E>) {
        if self.spill.is_empty() && usize::from(self.len) < INLINE {
            self.put_last(slot);
        } else {
            self.spill.push_back(slot);
        }
    }

    /// Puts `slot` after the inline entries; there is room.
    fn put_last(&mut self, slot: Slot<E>) {
        let at = (usize::from(self.head) + usize::from(self.len)) % INLINE;
        self.inline[at] = Some(slot);
        self.len += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes and pops against a plain queue as the reference, in patterns that wrap the inline
    /// ring and spill over it.
    #[test]
    fn entries_come_out_in_the_order_they_went_in() {
        let mut owed = OwedReplies::<u32>::default();
        let mut reference: VecDeque<Owed<u32>> = VecDeque::new();
        let mut next = 0u32;
        for round in 0..40 {
            let pushes = (round * 7) % 23;
            let pops = (round * 5) % 19;
            for _ in 0..pushes {
                next += 1;
                if next.is_multiple_of(3) {
                    let text = next.to_string().into_bytes();
                    owed.push_local(text.clone());
                    reference.push_back(Owed::Local(text));
                } else {
                    owed.push_backend(next);
                    reference.push_back(Owed::Backend(next));
                }
            }
            assert_eq!(owed.len(), reference.len());
            assert_eq!(
                owed.all_local(),
                reference.iter().all(|o| matches!(o, Owed::Local(_)))
            );
            for _ in 0..pops {
                assert_eq!(
                    owed.front_is_local(),
                    matches!(reference.front(), Some(Owed::Local(_)))
                );
                assert_eq!(owed.pop_front(), reference.pop_front());
            }
            assert_eq!(owed.is_empty(), reference.is_empty());
        }
        while let Some(expected) = reference.pop_front() {
            assert_eq!(owed.pop_front(), Some(expected));
        }
        assert_eq!(owed.pop_front(), None);
        assert!(owed.is_empty() && owed.all_local());
    }

    #[test]
    fn clear_empties_inline_and_spilled_entries() {
        let mut owed = OwedReplies::<u32>::default();
        for i in 0..20 {
            owed.push_backend(i);
            owed.push_local(vec![b'x']);
        }
        owed.clear();
        assert_eq!(owed.len(), 0);
        assert_eq!(owed.pop_front(), None);
        owed.push_backend(7);
        assert_eq!(owed.pop_front(), Some(Owed::Backend(7)));
    }
}
