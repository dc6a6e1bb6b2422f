"""One class index per dataset, checked for meaning when the dataset is loaded.

A dataset's splits must agree on what each label means before anything is trained or cached:
CoOp turns label y into the text prompt of class name y, and cross-entropy expects labels
0..C-1. `check_class_index` builds the index (label -> class name) from the training split and
checks every split against it, naming the source file and the offending entries:

- every label is a non-negative integer and every class name a non-empty string;
- each label has one class name across all splits;
- class names stay distinct once case, underscores and repeated spaces are ignored (the text
  encoder would see the same prompt for both);
- the training labels are exactly 0..C-1 (a gap means a class without training images);
- every label of val/test also occurs in train.
"""
import os.path as osp

__all__ = ["ClassIndexError", "check_class_index", "normalised_classname", "describe_entry"]

_SHOWN = 5  # entries or labels quoted in one message


class ClassIndexError(ValueError):
    """The splits of a dataset disagree about its classes (the message names file and entries)."""


def normalised_classname(name):
    """The form in which two class names count as the same: lower case, "_" as space, single spaces."""
    return " ".join(str(name).replace("_", " ").split()).casefold()


def describe_entry(split_name, index, item, root=None):
    """`"train" entry 3 (cat/x.jpg)`: where an item is, its path relative to `root` when inside it."""
    path = item.impath
    if root:
        prefix = osp.join(root, "")
        if path.startswith(prefix):
            path = path[len(prefix):]
    return f'"{split_name}" entry {index} ({path})'


def _labels_text(labels):
    labels = sorted(labels)
    shown = ", ".join(map(str, labels[:_SHOWN * 2]))
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > _SHOWN * 2 else "")


def _missing_ranges(present, upto):
    missing = [y for y in range(upto) if y not in present]
    return _labels_text(missing)


def check_class_index(splits, source, root=None, reference="train"):
    """{label: class name} of a dataset, after checking its splits agree (see the module doc).

    Args:
        splits: [(split name, list of Datum or None), ...]; None and empty splits are skipped.
        source: what the splits were read from (a file or folder), named in every error.
        root: folder that entry paths are shown relative to.
        reference: the split that defines the classes (ImageNet's variants have only "test").
    Raises ClassIndexError (a ValueError) naming `source`, the entries and how to fix them.
    """
    splits = [(name, items) for name, items in splits if items]
    first_of_label = {}  # label -> (class name, entry description)
    label_of_name = {}  # normalised name -> label
    for name, items in splits:
        for i, item in enumerate(items):
            label, classname = item.label, item.classname
            if type(label) is not int or label < 0:  # bool (a subclass of int) is no label either
                raise ClassIndexError(
                    f"{source}: {describe_entry(name, i, item, root)} has label {label!r}; labels are the class "
                    "indices 0..C-1 (non-negative integers). Fix the entry (or delete the file if gatescope wrote it).")
            if not isinstance(classname, str) or not classname.strip():
                raise ClassIndexError(
                    f"{source}: {describe_entry(name, i, item, root)} has class name {classname!r}; every entry "
                    "needs the non-empty name of its class (it becomes the text prompt).")
            if isinstance(item.domain, bool) or not isinstance(item.domain, int) or item.domain < 0:
                raise ClassIndexError(
                    f"{source}: {describe_entry(name, i, item, root)} has domain {item.domain!r}; a domain label "
                    "is a non-negative integer.")
            seen = first_of_label.get(label)
            if seen is None:
                key = normalised_classname(classname)
                other = label_of_name.get(key)
                if other is not None:
                    other_name, other_entry = first_of_label[other]
                    raise ClassIndexError(
                        f'{source}: labels {other} ("{other_name}", {other_entry}) and {label} ("{classname}", '
                        f"{describe_entry(name, i, item, root)}) have the same class name once case, underscores "
                        "and spaces are ignored, so their text prompts would be the same. Rename one of the two "
                        "classes, or give both the same label if they are one class.")
                label_of_name[key] = label
                first_of_label[label] = (classname, describe_entry(name, i, item, root))
            elif seen[0] != classname:
                raise ClassIndexError(
                    f'{source}: label {label} is named both "{seen[0]}" ({seen[1]}) and "{classname}" '
                    f"({describe_entry(name, i, item, root)}); a label is one class with one name. Fix the label "
                    "or the class name of one of them.")

    reference_items = next((items for name, items in splits if name == reference), None)
    if not reference_items:
        raise ClassIndexError(f'{source}: the "{reference}" split is empty; it defines the classes, so it needs '
                              "at least one image of every class.")
    trained = {item.label for item in reference_items}
    num_classes = max(trained) + 1
    if len(trained) != num_classes:
        raise ClassIndexError(
            f'{source}: the labels of "{reference}" should be 0..C-1, one per class, but they are '
            f"{_labels_text(trained)}: label(s) {_missing_ranges(trained, num_classes)} have no {reference} image. "
            f"Renumber the classes 0..{len(trained) - 1}, or add {reference} images of the missing ones.")
    for name, items in splits:
        if name == reference:
            continue
        unknown = [(i, item) for i, item in enumerate(items) if item.label not in trained]
        if unknown:
            labels = {item.label: item.classname for _, item in unknown}
            shown = "; ".join(describe_entry(name, i, item, root) for i, item in unknown[:_SHOWN])
            named = ", ".join(f'{y} ("{c}")' for y, c in sorted(labels.items())[:_SHOWN * 2])
            raise ClassIndexError(
                f'{source}: "{name}" has label(s) {named} that "{reference}" does not have ({len(unknown)} '
                f"entries, e.g. {shown}). A class is evaluated only if it is trained: add {reference} images of "
                f'it, or remove those entries from "{name}".')
    return {label: first_of_label[label][0] for label in sorted(first_of_label)}
