//! The model's source of choices: bytes from proptest, read in turn. When they run out every roll is
//! 0, the benign choice, so that shrinking a failure removes the faults that did not matter.

pub struct Dice {
    rolls: Vec<u8>,
    next: usize,
}

impl Dice {
    pub fn new(rolls: Vec<u8>) -> Self {
        Self { rolls, next: 0 }
    }

    pub fn next(&mut self) -> u8 {
        let roll = self.rolls.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        roll
    }

    /// How many of `len` waiting bytes move at once: all of them on a 0, else 1 to `len`.
    pub fn chunk(&mut self, len: usize) -> usize {
        match self.next() {
            0 => len,
            roll => 1 + roll as usize % len,
        }
    }
}
