//! Small graph helpers for the estimate: union-find (to merge "near" clusters) and a greedy
//! clique search (to find lines that are pairwise provably different clocks).

/// Union-find over `0..n`, with path halving.
pub struct UnionFind(Vec<usize>);

impl UnionFind {
    pub fn new(n: usize) -> Self {
        Self((0..n).collect())
    }

    pub fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }

    pub fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[a.max(b)] = a.min(b);
        }
    }

    /// Dense class numbers `0..classes` for every element, and the number of classes.
    pub fn classes(mut self) -> (Vec<usize>, usize) {
        let n = self.0.len();
        let mut dense = vec![usize::MAX; n];
        let mut out = Vec::with_capacity(n);
        let mut count = 0;
        for x in 0..n {
            let root = self.find(x);
            if dense[root] == usize::MAX {
                dense[root] = count;
                count += 1;
            }
            out.push(dense[root]);
        }
        (out, count)
    }
}

/// Undirected graph on `0..n` as adjacency bit sets.
pub struct Graph {
    words: usize,
    adj: Vec<u64>,
}

impl Graph {
    pub fn new(n: usize) -> Self {
        let words = n.div_ceil(64).max(1);
        Self {
            words,
            adj: vec![0; words * n],
        }
    }

    fn n(&self) -> usize {
        self.adj.len() / self.words
    }

    pub fn add_edge(&mut self, a: usize, b: usize) {
        self.adj[a * self.words + b / 64] |= 1 << (b % 64);
        self.adj[b * self.words + a / 64] |= 1 << (a % 64);
    }

    fn row(&self, v: usize) -> &[u64] {
        &self.adj[v * self.words..(v + 1) * self.words]
    }

    /// Size of a large clique, found greedily from every vertex (each step adds the candidate
    /// of highest degree). Not always the largest, but every clique it finds is a real one,
    /// which is all a lower bound needs. O(n² · n/64).
    pub fn greedy_clique(&self) -> usize {
        let n = self.n();
        let degree: Vec<u32> = (0..n)
            .map(|v| self.row(v).iter().map(|w| w.count_ones()).sum())
            .collect();
        let mut best = usize::from(n > 0);
        let mut cand = vec![0u64; self.words];
        for seed in 0..n {
            cand.copy_from_slice(self.row(seed));
            let mut size = 1;
            loop {
                let next = (0..n)
                    .filter(|&v| cand[v / 64] & (1 << (v % 64)) != 0)
                    .max_by_key(|&v| (degree[v], std::cmp::Reverse(v)));
                let Some(v) = next else { break };
                size += 1;
                for (c, r) in cand.iter_mut().zip(self.row(v)) {
                    *c &= r;
                }
            }
            best = best.max(size);
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_find_classes() {
        let mut uf = UnionFind::new(5);
        uf.union(3, 1);
        uf.union(4, 3);
        let (cls, n) = uf.classes();
        assert_eq!(n, 3);
        assert_eq!(cls, vec![0, 1, 2, 1, 1]);
    }

    #[test]
    fn clique_sizes() {
        assert_eq!(Graph::new(0).greedy_clique(), 0);
        assert_eq!(Graph::new(3).greedy_clique(), 1);
        // A 4-clique {0,1,2,3} plus a path 3-4-5, across a word boundary (70 vertices).
        let mut g = Graph::new(70);
        for a in 0..4 {
            for b in a + 1..4 {
                g.add_edge(a, b);
            }
        }
        g.add_edge(3, 4);
        g.add_edge(4, 69);
        assert_eq!(g.greedy_clique(), 4);
        // A 5-clique among high vertices.
        let vs = [60, 64, 65, 66, 69];
        for (i, &a) in vs.iter().enumerate() {
            for &b in &vs[i + 1..] {
                g.add_edge(a, b);
            }
        }
        assert_eq!(g.greedy_clique(), 5);
    }
}
