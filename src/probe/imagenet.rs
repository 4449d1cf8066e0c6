//! ImageNet-1k class names, for showing what a probe's shipped classifier predicts.
//!
//! The list is torchvision's English names of the 1000 ILSVRC-2012 classes, in index order.

const NAMES: &str = include_str!("imagenet_classes.txt");

/// The name of ImageNet-1k class `index`, or `None` past 999.
pub fn class_name(index: usize) -> Option<&'static str> {
    NAMES.lines().nth(index)
}

/// The number of ImageNet-1k classes.
pub fn num_classes() -> usize {
    NAMES.lines().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_in_index_order() {
        assert_eq!(num_classes(), 1000);
        assert_eq!(class_name(0), Some("tench"));
        assert_eq!(class_name(243), Some("bull mastiff"));
        assert_eq!(class_name(999), Some("toilet tissue"));
        assert_eq!(class_name(1000), None);
    }
}
