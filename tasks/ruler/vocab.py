"""Words, numbers and uuids for needles, and word pools for cwe.

RULER draws needle keys from the ``wonderwords`` adjective and noun lists. That package is an
optional extra, so this module has two pools:

* ``"wonderwords"``: the package's own lists (what RULER and lm-eval use), when installed;
* ``"builtin"``: lists written for this project (below), extended with pronounceable
  pseudo-words when a task needs more distinct words than the lists hold.

Which pool was used is recorded on every sample (``word_source``).
"""
from __future__ import annotations

import functools
import itertools
import random
import uuid
from typing import List, Tuple

_ADJECTIVES = """
able absent active agile alert amber ancient angry annual anxious arctic ardent ashen awake
bald bare basic bitter black bland blue bold bony brave brief bright brisk broad bronze brown
busy calm candid careful casual cheap cheerful chief chilly civil clean clear clever close
cloudy coarse cold common cool copper cosmic crafty crimson crisp cruel curly curved cute
damp dark dear deep dense direct distant dizzy dry dull dusty eager early earnest easy
elated elder elegant empty endless equal exact faint fair false famous fancy far fast fierce
final fine firm flat fluffy fond foreign formal fragile frank free fresh frozen full funny
gentle giant glad gloomy glossy golden good grand gray great green grim gritty happy hardy
harsh hasty heavy hidden high hollow honest hot huge humble hungry icy idle imaginary
immense inner iron jolly juicy keen kind large late lazy lean light little lively lone long
loose loud lovely loyal lucky lunar magic major mellow merry mighty mild minor misty modern
modest moist muddy narrow native neat nervous new nimble noble noisy normal odd old olive
open orange oval pale patient plain polite poor proud purple quick quiet rapid rare raw
ready red regal rich rigid ripe rocky rough round royal rural rusty sacred salty sandy
scarlet secret serene shaggy sharp shiny short shy silent silky silver simple sleek slim
slow small smooth snowy soft solar solid sour spare spicy stable steady steep stern sticky
stiff stormy strange strict strong sturdy subtle sunny super sweet swift tall tame tender
thick thin tidy tiny tired tough tranquil true twin upbeat urban vague vast velvet vivid
warm wary weak wealthy weary wet white whole wide wild windy wise witty wooden woolly
yellow young zany zealous
"""

_NOUNS = """
acorn actor anchor angle ant apple apron arch arena arrow artist atlas attic autumn axe
badge bagel baker ball banana band banjo barn basket bat beach beacon bean bear beaver bed
bee beetle bell bench berry bicycle bird biscuit blanket boat bonnet book boot bottle boulder
bow bowl box branch bread breeze brick bridge brook broom bucket buffalo bugle butter button
cabin cable cactus cake camel camera canal candle canoe canyon cap captain car carpet carrot
castle cat cave cedar cellar chair chalk channel cheese cherry chess chimney circle city
clock cloud clover coat cobra coffee comet compass cookie copper coral cotton cottage
country cow crab crane crayon creek cricket crow crown crystal cup curtain cushion daisy
dancer deer desert desk diamond dinner doctor dog dolphin donkey door dragon drawer dream
drum duck eagle earth echo eel elbow elephant elk engine falcon farm feather fence fern
field fig finch fire fish flag flame flute fog forest fork fox frog garden gate gem ghost
giraffe glacier glove goat gold goose grape grass guitar gull hammer harbor harp hat hawk
hazel heart hedge helmet hen heron hill hive honey horn horse hotel house island ivy jacket
jaguar jar jelly jewel kettle key king kite kitten knife koala ladder lake lamp lantern leaf
lemon leopard letter lily lion lizard lobster lock lotus magnet mango map maple marble
market meadow melon mirror mole monkey moon moose moss moth mountain mouse mule museum
needle nest net night oak oar ocean octopus olive onion orchard otter owl oyster paddle
palace panda paper parrot peach pear pebble pelican pencil pepper piano pigeon pillow pine
planet plum pond poppy potato puppy quail quilt rabbit radio raft rain raven reef ribbon
river robin rocket rose ruby saddle sail salmon sand scarf school seal shadow shark sheep
shell ship shoe shore silk singer sky sled snail snake sock sofa spider spoon squirrel star
statue stone storm stream sugar summit sun swan table tiger toast tomato tower train tree
trout tulip tunnel turtle valley vase violin volcano wagon walnut walrus wand whale wheat
whistle willow window wolf wren yacht zebra
"""

_VERBS = """
accept admire allow answer arrive ask bake balance bathe beg behave believe blink boil
borrow bounce breathe bring brush build bury calculate call carry catch change chase cheer
chew clap climb collect comb compare count crawl cross dance decide deliver describe dig
discover dive draw dream drift drink drop earn enjoy enter escape explain explore fetch
fill find float fly fold follow gather giggle glide greet grow guard guess hang help hide
hike hop hum hunt hurry imagine invent invite jog juggle jump kick kneel knit knock laugh
launch lead learn lift listen march mend mix move nod notice observe offer open paint pause
perform plant play polish pour pray print pull push question race reach read relax remember
repair rescue rest return ride roar roll row run sail scatter search sew shake share shine
shout sing sip skate sketch skip sleep slide smile sneeze solve sort spin splash stack stir
stretch study swim swing talk teach thank throw travel trust tumble turn twirl visit wade
walk wander wash watch wave weave whisper whistle win wink wish wonder write yawn
"""

ADJECTIVES: Tuple[str, ...] = tuple(sorted(set(_ADJECTIVES.split())))
NOUNS: Tuple[str, ...] = tuple(sorted(set(_NOUNS.split())))
VERBS: Tuple[str, ...] = tuple(sorted(set(_VERBS.split())))

_ONSETS = ("b", "br", "c", "cl", "d", "dr", "f", "fl", "g", "gr", "h", "j", "k", "l", "m", "n",
           "p", "pl", "r", "s", "st", "t", "tr", "v", "w", "z")
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ea", "oo")
_CODAS = ("", "n", "r", "l", "m", "st", "nd", "ck")


def _syllables() -> List[str]:
    return [o + n + c for o in _ONSETS for n in _NUCLEI for c in _CODAS]


@functools.lru_cache(maxsize=None)
def pseudo_words(count: int) -> Tuple[str, ...]:
    """``count`` distinct two-syllable pseudo-words in a fixed order (no RNG involved)."""
    syl = _syllables()
    out = []
    seen = set(ADJECTIVES) | set(NOUNS) | set(VERBS)
    for a, b in itertools.product(syl, syl):
        w = a + b
        if w not in seen:
            seen.add(w)
            out.append(w)
            if len(out) == count:
                break
    if len(out) < count:
        raise ValueError(f"pseudo_words: at most {len(out)} words available, asked for {count}")
    return tuple(out)


@functools.lru_cache(maxsize=4)
def word_lists(pool: str) -> Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]]:
    """(adjectives, nouns, verbs) of the pool ``"wonderwords"`` or ``"builtin"``."""
    if pool == "builtin":
        return ADJECTIVES, NOUNS, VERBS
    if pool == "wonderwords":
        try:
            import wonderwords
        except ImportError:
            raise ValueError("word pool 'wonderwords' needs the wonderwords package "
                             "(pip install wonderwords, or lm-eval[ruler]); use --words builtin") from None
        cats = wonderwords.RandomWord()._categories
        return (tuple(sorted(set(cats["adjectives"]))), tuple(sorted(set(cats["nouns"]))),
                tuple(sorted(set(cats["verbs"]))))
    raise ValueError(f"word pool must be 'wonderwords' or 'builtin', got {pool!r}")


def resolve_pool(pool: str) -> str:
    """``"auto"`` -> ``"wonderwords"`` when installed, else ``"builtin"``."""
    if pool != "auto":
        word_lists(pool)
        return pool
    try:
        word_lists("wonderwords")
        return "wonderwords"
    except ValueError:
        return "builtin"


def random_value(kind: str, rng: random.Random, pool: str) -> str:
    """One needle key or value: ``words`` (adjective-noun), ``numbers`` (7 digits), ``uuids``."""
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        adjs, nouns, _ = word_lists(pool)
        return f"{rng.choice(adjs)}-{rng.choice(nouns)}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"needle type must be 'words', 'numbers' or 'uuids', got {kind!r}")


@functools.lru_cache(maxsize=4)
def cwe_words(pool: str, needed: int) -> Tuple[str, ...]:
    """Distinct single words for cwe: nouns, adjectives and verbs of the pool, then pseudo-words."""
    adjs, nouns, verbs = word_lists(pool)
    base = tuple(sorted(set(adjs) | set(nouns) | set(verbs)))
    if needed <= len(base):
        return base
    have = set(base)
    extra = [w for w in pseudo_words(needed - len(base) + 64) if w not in have]
    return base + tuple(extra[: needed - len(base)])
