import torch

from mmdpo.figures import image_grid


def tiles(rows: int, cols: int, height: int, width: int) -> torch.Tensor:
    """Tile (r, c) is one colour, (10 r + 5, 20 c + 7, 200) / 255, so each tile is known by its pixels."""
    images = torch.empty(rows, cols, 3, height, width)
    for r in range(rows):
        for c in range(cols):
            images[r, c] = torch.tensor([10 * r + 5, 20 * c + 7, 200]).div(255).view(3, 1, 1)
    return images


def test_tiles_are_enlarged_to_the_minimum_and_placed_right_of_the_labels_and_below_the_column_labels():
    grid = image_grid(tiles(2, 3, 8, 8), ["a", "b"], ["x", "y", "z"], min_tile=96)
    # 8 px tiles x 12 (the least whole factor reaching 96) = 96, 4 px apart, after a 150 px label column and an 18
    # px column-label row.
    assert grid.size == (150 + 3 * (96 + 4), 18 + 2 * (96 + 4))
    for r in range(2):
        for c in range(3):
            left, top = 150 + c * 100, 18 + r * 100
            colour = (10 * r + 5, 20 * c + 7, 200)
            assert grid.getpixel((left, top)) == colour
            assert grid.getpixel((left + 95, top + 95)) == colour
            assert grid.getpixel((left + 96, top + 96)) == (255, 255, 255)


def test_without_column_labels_the_tiles_start_at_the_top_and_keep_their_aspect():
    grid = image_grid(tiles(1, 2, 4, 8), ["a"], min_tile=20)
    # 8 px wide tiles x 3 (ceil(20 / 8)) = 24 wide, 12 high.
    assert grid.size == (150 + 2 * (24 + 4), 12 + 4)
    assert grid.getpixel((150 + 28, 0)) == (5, 27, 200)
    assert grid.getpixel((150 + 28 + 23, 11)) == (5, 27, 200)
    assert grid.getpixel((150 + 28, 12)) == (255, 255, 255)
