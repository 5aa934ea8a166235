"""The docs' measured figures agree with their data (experiments/render.py)."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("render", REPO / "experiments" / "render.py")
render = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render)


def test_pages_agree_with_their_data(capsys):
  assert render.main(["--check"]) == 0, capsys.readouterr().out


def test_check_notices_a_changed_figure():
  page = "<!-- render: reproduce-headline -->\nMS-ConvLSTM 0.10x ConvLSTM\n<!-- /render -->\n"
  assert render.render_page(page) != page
  rendered = render.render_page(page)
  assert render.render_page(rendered) == rendered


def test_every_block_on_the_pages_is_known():
  for page in render.PAGES:
    for match in render.BLOCK.finditer((REPO / page).read_text()):
      assert match.group("name") in render.BLOCKS, (page, match.group("name"))
