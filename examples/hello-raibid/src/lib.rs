//! A tiny crate for raibid-ci's local demo and end-to-end tests.

/// Greets `name`.
pub fn greet(name: &str) -> String {
    format!("hello, {name}, from raibid-ci")
}

/// Sums the numbers.
pub fn sum(xs: &[i64]) -> i64 {
    xs.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets() {
        assert_eq!(greet("spark"), "hello, spark, from raibid-ci");
    }

    #[test]
    fn sums() {
        assert_eq!(sum(&[1, 2, 3]), 6);
    }
}
