//! The ImageNet-1k class names, in the index order of torchvision and timm classifiers.

const CLASS_NAMES: &str = include_str!("imagenet_classes.txt");

/// The 1000 class names, index `i` being logit `i`.
pub fn class_names() -> Vec<&'static str> {
    CLASS_NAMES.lines().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousand_classes() {
        let names = super::class_names();
        assert_eq!(names.len(), 1000);
        assert_eq!(names[0], "tench");
        assert_eq!(names[999], "toilet tissue");
    }
}
