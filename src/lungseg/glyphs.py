"""5 x 7 bitmaps of what is burned into radiographs: side markers, letters of labels, a label box.
Drawn by the synthetic phantoms (lungseg.data.synthetic) and by the training augmentations
(lungseg.augment), so both show the same marks."""

GLYPHS = {
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "box": ("#####", "#####", "#####", "#####", "#####", "#####", "#####"),
}


def bitmap(name: str) -> list[list[bool]]:
    """The glyph `name` as rows of booleans (True: ink)."""
    return [[c == "#" for c in row] for row in GLYPHS[name]]
