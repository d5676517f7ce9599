"""Grounding methods. Importing this package registers every method in :data:`weakground.registry.METHODS`."""

from weakground.methods.base import Captioner, Grounder, InferenceSettings, JointSpaceGrounder, create_method  # noqa: F401
from weakground.methods import mcb_attention  # noqa: F401  (registers "mcb_attention")
from weakground.methods import mcb_captions  # noqa: F401  (mcb_attention's variant for `query: caption`)
from weakground.methods import center  # noqa: F401  (registers "center")
from weakground.methods import bridge  # noqa: F401  (registers "bridge"; its models load on first use)
from weakground.methods import dsve_loc  # noqa: F401  (registers "dsve_loc"; Engilberge et al.)
from weakground.methods import multilevel  # noqa: F401  (registers "multilevel"; Akbari et al.)
from weakground.methods import matchmap  # noqa: F401  (registers "matchmap"; the matchmap paper)
from weakground.methods import captioner  # noqa: F401  (registers "ss_attention" and "updown"; Hu et al.)

# Listing the registering submodules marks their imports as used (pyflakes ignores noqa).
__all__ = ["Captioner", "Grounder", "InferenceSettings", "JointSpaceGrounder", "create_method", "mcb_attention", "mcb_captions",
           "center", "bridge", "dsve_loc", "multilevel", "matchmap", "captioner"]
