"""Small sets of real photos in the Flickr30K Entities layout, from images that ship in installed packages.

The annotations (``weakground/data/demo/``: ``Sentences/``, ``Annotations/``, split lists) were written by hand
for this project: captions, phrases and boxes drawn by looking at each photo. The photos themselves are not
copied into the repository: a sources file names where each comes from, and :func:`materialize_demo` links
(or copies) them into a cache folder as ``Images/<id>.jpg`` beside the annotations, so the ordinary
:func:`weakground.data.flickr30k_entities.read_flickr30k_entities` reads the sets unchanged.

Two named splits (:data:`SPLITS`):

* ``tuning``: the 9 demo photos (``sources.json``, listed in ``test.txt``), which ``bridge``'s defaults were chosen
  on and which ``locate --demo`` and the web app offer. Sources: ``skimage.data`` (astronaut, camera, chelsea,
  coffee, rocket, motorcycle_left), scikit-learn's ``load_sample_images`` files (china, flower) and matplotlib's
  ``grace_hopper.jpg``. ``camera`` is grayscale on purpose: it exercises the grayscale path of the pipeline.
* ``heldout``: 9 other photos (``heldout_sources.json``, listed in ``heldout.txt``) that no default is chosen on,
  for honest figures. Sources: Debian's ``labelme-examples`` (GPL-3+; PASCAL VOC 2011 and other example photos
  under ``/usr/share/doc/labelme-examples/examples/``), mahotas' ``luispedro.jpg`` (MIT) and ``skimage.data``'s
  ``clock_motion`` (grayscale, motion-blurred).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from weakground.data.types import ReadResult
from weakground.errors import WeakgroundError

DEMO_DIR = Path(__file__).parent / "demo"
# split name -> (its list file, read as the Flickr30K Entities split of that stem; its sources file). The tuning
# list keeps the name ``test.txt`` so roots materialised by earlier versions read the same.
SPLITS = {"tuning": ("test.txt", "sources.json"), "heldout": ("heldout.txt", "heldout_sources.json")}
# Debian's labelme-examples installs its example photos here (``apt-get install labelme-examples``).
LABELME_EXAMPLES = Path("/usr/share/doc/labelme-examples/examples")


def image_source_path(source: str) -> Path:
    """Resolve ``"package:name"`` from ``sources.json`` to the file inside the installed package.

    Raises:
        WeakgroundError: the package is not installed or the file is missing.
    """
    package, _, name = source.partition(":")
    try:
        if package == "skimage":
            import skimage

            path = Path(skimage.__file__).parent / "data" / (name + (".jpg" if name == "rocket" else ".png"))
        elif package == "sklearn":
            import sklearn.datasets

            path = Path(sklearn.datasets.__file__).parent / "images" / f"{name}.jpg"
        elif package == "matplotlib":
            import matplotlib

            path = Path(matplotlib.get_data_path()) / "sample_data" / name
        elif package == "mahotas":
            import mahotas

            path = Path(mahotas.__file__).parent / "demos" / "data" / name
        elif package == "labelme-examples":  # a Debian package, not a Python one: a fixed install path
            path = LABELME_EXAMPLES / name
            if not path.is_file():
                raise WeakgroundError(f"demo image {source!r}: {path} is missing (install the Debian package "
                                      "labelme-examples: apt-get install labelme-examples)")
        else:
            raise WeakgroundError(f"demo image source {source!r}: unknown package {package!r}")
    except ImportError as exc:
        raise WeakgroundError(f"demo image {source!r} needs the package {package} ({exc})") from None
    if not path.is_file():
        raise WeakgroundError(f"demo image {source!r}: {path} is missing from the installed package")
    return path


def split_sources(split: str = "tuning") -> dict[str, str]:
    """``{image_id: "package:name"}`` of one split (:data:`SPLITS`), in file order.

    Raises:
        WeakgroundError: an unknown split name.
    """
    if split not in SPLITS:
        raise WeakgroundError(f"unknown demo split {split!r}; known: {', '.join(SPLITS)}")
    return json.loads((DEMO_DIR / SPLITS[split][1]).read_text(encoding="utf-8"))


def reader_split(split: str = "tuning") -> str:
    """The Flickr30K Entities split name (the list file's stem) a materialised root reads ``split`` as."""
    split_sources(split)  # validates the name
    return Path(SPLITS[split][0]).stem


def demo_photo_names() -> list[str]:
    """Names of the bundled demo photos (``sources.json``'s keys), in file order."""
    return list(json.loads((DEMO_DIR / "sources.json").read_text(encoding="utf-8")))


def demo_photo_path(name: str) -> Path:
    """The installed file of demo photo ``name`` (e.g. ``"astronaut"``), read in place, never copied.

    Raises:
        WeakgroundError: an unknown name (the message lists the known ones) or a missing package file.
    """
    sources = json.loads((DEMO_DIR / "sources.json").read_text(encoding="utf-8"))
    if name not in sources:
        raise WeakgroundError(f"unknown demo photo {name!r}; known: {', '.join(sources)}")
    return image_source_path(sources[name])


def materialize_demo(root: str | Path | None = None, split: str = "tuning") -> Path:
    """Lay a demo split out as a Flickr30K Entities root and return it.

    Args:
        root: folder to write (default: ``<cache>/demo_flickr30k``, see :func:`weakground.cache.cache_dir`).
        split: ``"tuning"`` (the default, what ``read_demo()`` has always read) or ``"heldout"``. Only that
            split's photos are linked, so the tuning set needs none of the held-out sources' packages.

    Returns:
        The root, holding ``Sentences/``, ``Annotations/``, ``Images/<id>.jpg`` (links to, or copies of, the
        package files; a PNG under a ``.jpg`` name is fine, decoders sniff the format) and the split's list
        (``test.txt`` for tuning, ``heldout.txt``; read it with :func:`reader_split`).
    """
    sources = split_sources(split)
    if root is None:
        from weakground.cache import cache_dir

        root = cache_dir() / "demo_flickr30k"
    root = Path(root)
    for sub in ("Sentences", "Annotations"):
        shutil.copytree(DEMO_DIR / sub, root / sub, dirs_exist_ok=True)
    shutil.copyfile(DEMO_DIR / SPLITS[split][0], root / SPLITS[split][0])
    images = root / "Images"
    images.mkdir(parents=True, exist_ok=True)
    for image_id, source in sources.items():
        src, dst = image_source_path(source), images / f"{image_id}.jpg"
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        try:
            dst.symlink_to(src)
        except OSError:
            shutil.copyfile(src, dst)  # file systems without symlinks (some Windows setups)
    return root


def read_demo(root: str | Path | None = None, split: str = "tuning") -> ReadResult:
    """Materialise a demo split (see :func:`materialize_demo`; default the tuning set) and read it, strictly."""
    from weakground.data.flickr30k_entities import read_flickr30k_entities

    return read_flickr30k_entities(materialize_demo(root, split), reader_split(split), strict=True)
