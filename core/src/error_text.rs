//! An error as one line for people: its message and its causes, `a: b: c`, each cause once
//! (libraries often repeat their source's text in their own).

/// `err` with its causes, `a: b: c`; a cause whose text is already in the line is skipped.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    #[test]
    fn causes_follow_once() {
        let inner = Layer {
            text: "connection refused",
            source: None,
        };
        let middle = Layer {
            text: "connecting: connection refused",
            source: Some(Box::new(inner)),
        };
        let outer = Layer {
            text: "delivery log",
            source: Some(Box::new(middle)),
        };
        assert_eq!(
            chain(&outer),
            "delivery log: connecting: connection refused"
        );
    }
}
