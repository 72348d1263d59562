//! The topic exchange's binding index: a trie over dot-separated words with literal, `*`
//! (exactly one word) and `#` (zero or more words) edges.
//!
//! Matching walks the trie once per routing key; `(node, word index)` pairs are memoised as
//! soon as a `#` edge is taken, so keys like `#.#.#.#.w59` stay linear instead of the
//! exponential walk RabbitMQ 3.10.8 does. Pure data; the exchange holds it under its lock.

use std::collections::{HashMap, HashSet};

/// Splits a routing or binding key into words; the empty key has no words, as in RabbitMQ.
pub fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// A trie of binding keys whose leaves hold destinations of type `D`.
#[derive(Debug)]
pub struct TopicTrie<D> {
    root: Node<D>,
}

#[derive(Debug)]
struct Node<D> {
    words: HashMap<Box<str>, Node<D>>,
    star: Option<Box<Node<D>>>,
    hash: Option<Box<Node<D>>>,
    dests: Vec<D>,
}

impl<D> Default for Node<D> {
    fn default() -> Self {
        Self {
            words: HashMap::new(),
            star: None,
            hash: None,
            dests: Vec::new(),
        }
    }
}

impl<D> Default for TopicTrie<D> {
    fn default() -> Self {
        Self {
            root: Node::default(),
        }
    }
}

impl<D> Node<D> {
    fn is_empty(&self) -> bool {
        self.words.is_empty() && self.star.is_none() && self.hash.is_none() && self.dests.is_empty()
    }

    fn child_mut(&mut self, word: &str) -> &mut Node<D> {
        match word {
            "*" => self.star.get_or_insert_with(Default::default),
            "#" => self.hash.get_or_insert_with(Default::default),
            w => self.words.entry(w.into()).or_default(),
        }
    }
}

impl<D: Clone + PartialEq> TopicTrie<D> {
    /// Adds `dest` under `pattern`.
    pub fn insert(&mut self, pattern: &str, dest: D) {
        let mut node = &mut self.root;
        for w in words(pattern) {
            node = node.child_mut(w);
        }
        if !node.dests.contains(&dest) {
            node.dests.push(dest);
        }
    }

    /// Removes `dest` from `pattern`, pruning nodes left empty.
    pub fn remove(&mut self, pattern: &str, dest: &D) {
        fn go<D: PartialEq>(node: &mut Node<D>, ws: &[&str], dest: &D) {
            let Some((first, rest)) = ws.split_first() else {
                node.dests.retain(|d| d != dest);
                return;
            };
            let empty = match *first {
                "*" => node.star.as_deref_mut().map(|n| {
                    go(n, rest, dest);
                    n.is_empty()
                }),
                "#" => node.hash.as_deref_mut().map(|n| {
                    go(n, rest, dest);
                    n.is_empty()
                }),
                w => node.words.get_mut(w).map(|n| {
                    go(n, rest, dest);
                    n.is_empty()
                }),
            };
            if empty == Some(true) {
                match *first {
                    "*" => node.star = None,
                    "#" => node.hash = None,
                    w => {
                        node.words.remove(w);
                    }
                }
            }
        }
        go(&mut self.root, &words(pattern), dest);
    }

    /// Calls `found` for the destinations of every pattern that matches `routing_key`
    /// (a destination bound by several matching patterns is reported for each).
    pub fn matches(&self, routing_key: &str, mut found: impl FnMut(&D)) {
        let ws = words(routing_key);
        let mut seen: Option<HashSet<(usize, usize)>> = None;
        walk(&self.root, &ws, 0, &mut seen, &mut found);
    }
}

fn walk<D>(
    node: &Node<D>,
    ws: &[&str],
    i: usize,
    seen: &mut Option<HashSet<(usize, usize)>>,
    found: &mut impl FnMut(&D),
) {
    if let Some(seen) = seen
        && !seen.insert((node as *const Node<D> as usize, i))
    {
        return;
    }
    if i == ws.len() {
        node.dests.iter().for_each(&mut *found);
    } else {
        if let Some(child) = node.words.get(ws[i]) {
            walk(child, ws, i + 1, seen, found);
        }
        if let Some(star) = &node.star {
            walk(star, ws, i + 1, seen, found);
        }
    }
    if let Some(hash) = &node.hash {
        // `#` can swallow any number of words: from here on, the same (node, index) can be
        // reached along many paths, so start remembering where the walk has been.
        seen.get_or_insert_with(HashSet::new);
        for j in i..=ws.len() {
            walk(hash, ws, j, seen, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn routed(trie: &TopicTrie<u32>, key: &str) -> Vec<u32> {
        let mut v = vec![];
        trie.matches(key, |d| v.push(*d));
        v.sort();
        v.dedup();
        v
    }

    /// The obvious exponential matcher, as an oracle.
    fn naive(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|j| naive(rest, &key[j..])),
            Some((&"*", rest)) => !key.is_empty() && naive(rest, &key[1..]),
            Some((w, rest)) => key.first() == Some(w) && naive(rest, &key[1..]),
        }
    }

    #[test]
    fn star_is_one_word_hash_is_any_number() {
        let mut t = TopicTrie::default();
        t.insert("a.*.c", 1);
        t.insert("a.#", 2);
        t.insert("#", 3);
        t.insert("*.b.*", 4);
        assert_eq!(routed(&t, "a.b.c"), vec![1, 2, 3, 4]);
        assert_eq!(routed(&t, "a"), vec![2, 3]);
        assert_eq!(routed(&t, ""), vec![3]);
        assert_eq!(routed(&t, "x.b"), vec![3]);
    }

    #[test]
    fn remove_prunes() {
        let mut t = TopicTrie::default();
        t.insert("a.b", 1);
        t.insert("a.b", 2);
        t.remove("a.b", &1);
        assert_eq!(routed(&t, "a.b"), vec![2]);
        t.remove("a.b", &2);
        assert!(t.root.is_empty());
    }

    #[test]
    fn many_hashes_stay_fast() {
        let mut t = TopicTrie::default();
        t.insert("#.#.#.#.w59", 1);
        let key: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();
        assert_eq!(routed(&t, &key.join(".")), vec![1]);
        assert_eq!(routed(&t, &key[..59].join(".")), Vec::<u32>::new());
    }

    proptest! {
        #[test]
        fn trie_agrees_with_naive_matcher(
            patterns in prop::collection::vec(prop::collection::vec(prop::sample::select(vec!["a", "b", "*", "#"]), 0..5), 1..6),
            key in prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..6),
        ) {
            let mut t = TopicTrie::default();
            for (i, p) in patterns.iter().enumerate() {
                t.insert(&p.join("."), i as u32);
            }
            let got = routed(&t, &key.join("."));
            let want: Vec<u32> = patterns.iter().enumerate()
                .filter(|(_, p)| naive(p, &key))
                .map(|(i, _)| i as u32).collect();
            prop_assert_eq!(got, want);
        }
    }
}
