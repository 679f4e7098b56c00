"""Deterministic synthetic product catalog: the project's embedded default dataset.

``generate_catalog(n_rows, seed)`` draws products from a built-in 3-level taxonomy
(supergroup > group > module) with invented brands, noisy titles (sizes, colours, pack counts,
marketing words, casing noise, typos, repeated titles), optional descriptions and prices that
follow module, brand, size and pack count. Only ``random.Random(seed)`` is used, so the same
``(n_rows, seed)`` always gives the same frame.
"""

from __future__ import annotations

import random
import re
from typing import NamedTuple

import pandas as pd

COLUMNS = ["title", "description", "supergroup", "group", "module", "brand", "price", "image"]

# supergroup -> group -> module -> ("noun/noun/...", "attribute/attribute/...", base price, size unit)
TAXONOMY: dict[str, dict[str, dict[str, tuple[str, str, float, str]]]] = {
    "grocery": {
        "staples": {
            "rice": ("basmati rice/rice/long grain rice/sona masoori rice", "aged/premium/organic/extra long/everyday", 110, "kg"),
            "flour": ("wheat flour/atta/whole wheat atta/flour", "chakki fresh/multigrain/stone ground/organic", 55, "kg"),
            "cooking oil": ("sunflower oil/cooking oil/mustard oil/groundnut oil", "cold pressed/refined/kachi ghani/light", 190, "ml"),
        },
        "snacks & beverages": {
            "chips": ("potato chips/chips/wafers/crisps", "salted/masala/cream & onion/tangy tomato/crunchy", 30, "g"),
            "tea": ("tea/green tea/tea bags/leaf tea", "assam/darjeeling/masala/tulsi/strong", 220, "g"),
            "coffee": ("instant coffee/coffee/filter coffee/coffee powder", "arabica/dark roast/rich/strong", 320, "g"),
        },
        "confectionery": {
            "chocolate": ("chocolate bar/dark chocolate/milk chocolate/chocolate", "rich/hazelnut/almond/creamy", 90, "g"),
            "chewing gum": ("chewing gum/bubble gum/gum/sugar free gum", "mint/spearmint/fruity/sugar free", 5, "none"),
            "candy": ("toffee/candy/lollipop/hard candy", "fruity/caramel/mango/orange", 1.5, "none"),
        },
        "breakfast": {
            "breakfast cereal": ("cornflakes/muesli/breakfast cereal/cereal", "crunchy/honey/fruit & nut/high fibre", 190, "g"),
            "oats": ("oats/rolled oats/instant oats/masala oats", "high fibre/gluten free/whole grain/honey", 160, "g"),
        },
    },
    "beauty & personal care": {
        "hair care": {
            "shampoo": ("shampoo/anti-dandruff shampoo/hair wash/hair cleanser", "herbal/smooth & silky/volumizing/keratin/anti-hairfall", 250, "ml"),
            "conditioner": ("conditioner/hair conditioner/hair mask/hair serum", "smooth & silky/keratin/deep repair/argan", 280, "ml"),
            "hair oil": ("hair oil/coconut hair oil/hair serum/ayurvedic oil", "herbal/non-sticky/onion/amla", 180, "ml"),
        },
        "skin care": {
            "face wash": ("face wash/facial cleanser/foaming cleanser/cleanser", "neem/oil control/brightening/gentle", 180, "ml"),
            "moisturizer": ("moisturizer/face cream/body lotion/cream", "hydrating/vitamin e/aloe vera/cocoa butter", 260, "ml"),
            "sunscreen": ("sunscreen/sunscreen lotion/sun block/spf cream", "spf 50/spf 30/matte/water resistant", 350, "ml"),
        },
        "oral care": {
            "toothpaste": ("toothpaste/tooth paste/gel toothpaste/whitening paste", "mint/clove/herbal/sensitive/whitening", 95, "g"),
            "toothbrush": ("toothbrush/tooth brush/soft toothbrush/brush", "soft bristle/ultra clean/charcoal/sensitive", 40, "none"),
        },
        "makeup": {
            "lipstick": ("lipstick/matte lipstick/lip colour/liquid lipstick", "matte/long stay/creamy/nude", 399, "none"),
            "eyeliner": ("eyeliner/kajal/kohl pencil/liquid liner", "smudge proof/waterproof/intense black/long stay", 220, "none"),
        },
    },
    "home & kitchen": {
        "cookware": {
            "pressure cooker": ("pressure cooker/cooker/inner lid cooker/outer lid cooker", "aluminium/stainless steel/induction base/hard anodised", 1800, "ltr"),
            "frying pan": ("frying pan/fry pan/non-stick pan/tawa", "non-stick/induction base/granite coated/cast iron", 900, "none"),
            "cookware set": ("cookware set/kitchen set/pan set/non-stick pan", "non-stick/3 piece/granite coated/induction base", 2800, "none"),
        },
        "kitchen appliances": {
            "mixer grinder": ("mixer grinder/mixer/grinder/juicer mixer grinder", "3 jar/heavy duty/stainless steel/powerful", 3200, "w"),
            "air fryer": ("air fryer/fryer/digital air fryer/oil free fryer", "digital/rapid air/touch panel/compact", 5500, "ltr"),
        },
        "home cleaning": {
            "detergent": ("detergent powder/washing powder/detergent/liquid detergent", "matic/front load/top load/lemon fresh", 220, "kg"),
            "dishwash": ("dishwash liquid/dish wash gel/dishwash bar/dishwash", "lemon/grease cutting/anti-bacterial/lime", 120, "ml"),
            "floor cleaner": ("floor cleaner/surface cleaner/disinfectant cleaner/cleaner liquid", "pine/floral/lavender/germ kill", 180, "ml"),
        },
        "furnishing": {
            "bedsheet": ("bedsheet/bed sheet/double bedsheet/bedsheet with pillow covers", "cotton/floral print/144 tc/king size", 900, "none"),
            "curtains": ("curtains/door curtain/window curtain/curtain set", "blackout/sheer/printed/eyelet", 700, "none"),
        },
    },
    "clothing": {
        "men's wear": {
            "t-shirt": ("t-shirt/tshirt/polo t-shirt/round neck tee", "cotton/slim fit/printed/regular fit/dri-fit", 450, "apparel"),
            "jeans": ("jeans/denim jeans/slim jeans/denims", "slim fit/stretchable/mid rise/faded", 1200, "waist"),
            "formal shirt": ("formal shirt/shirt/office shirt/cotton shirt", "slim fit/full sleeve/checked/solid", 900, "apparel"),
        },
        "women's wear": {
            "kurta": ("kurta/kurti/anarkali kurta/straight kurta", "rayon/printed/embroidered/cotton", 800, "apparel"),
            "saree": ("saree/sari/silk saree/designer saree", "banarasi/georgette/chiffon/printed", 1500, "none"),
            "leggings": ("leggings/churidar leggings/ankle leggings/jeggings", "stretchable/cotton lycra/ankle length/solid", 350, "apparel"),
        },
        "footwear": {
            "sneakers": ("sneakers/casual shoes/canvas shoes/shoes", "lace up/lightweight/white sole/canvas", 1400, "shoe"),
            "sandals": ("sandals/slippers/flip flops/floaters", "comfort/outdoor/cushioned/anti-slip", 500, "shoe"),
        },
        "innerwear": {
            "socks": ("socks/ankle socks/crew socks/sports socks", "cotton/no show/cushioned/striped", 150, "apparel"),
            "briefs": ("briefs/trunks/underwear/boxer briefs", "cotton/modal/low rise/stretch", 300, "apparel"),
        },
    },
    "electronics": {
        "mobiles & accessories": {
            "smartphone": ("smartphone/mobile phone/5g phone/android phone", "5g/dual sim/amoled/fast charging", 15000, "gb"),
            "phone case": ("phone case/back cover/mobile cover/case", "shockproof/transparent/silicone/flip", 250, "none"),
            "power bank": ("power bank/portable charger/powerbank/fast charger", "fast charging/slim/dual usb/type c", 1200, "mah"),
        },
        "computers": {
            "laptop": ("laptop/notebook/thin and light laptop/gaming laptop", "core i5/ryzen 5/16gb ram/full hd", 50000, "gb"),
            "mouse": ("wireless mouse/mouse/optical mouse/gaming mouse", "wireless/ergonomic/silent click/rgb", 500, "none"),
        },
        "audio": {
            "earbuds": ("earbuds/wireless earbuds/tws earbuds/earphones", "bluetooth 5.3/noise cancelling/low latency/deep bass", 1500, "none"),
            "headphones": ("headphones/over-ear headphones/wireless headphones/earphones", "noise cancelling/deep bass/foldable/wired", 2500, "none"),
            "bluetooth speaker": ("bluetooth speaker/portable speaker/speaker/party speaker", "waterproof/deep bass/rgb/portable", 2000, "none"),
        },
        "home entertainment": {
            "smart tv": ("smart tv/led tv/television/android tv", "4k uhd/full hd/hdr/dolby audio", 28000, "inch"),
            "soundbar": ("soundbar/home theatre/sound bar/speaker", "dolby atmos/2.1 channel/wireless subwoofer/deep bass", 7000, "w"),
        },
    },
    "sports": {
        "fitness": {
            "dumbbells": ("dumbbells/dumbbell set/hex dumbbells/weights", "pvc/rubber coated/chrome/adjustable", 900, "kg"),
            "yoga mat": ("yoga mat/exercise mat/gym mat/mat", "anti-skid/6mm/eco-friendly/tpe", 600, "none"),
        },
        "cricket": {
            "cricket bat": ("cricket bat/bat/english willow bat/kashmir willow bat", "english willow/kashmir willow/full size/tennis", 2200, "none"),
            "cricket ball": ("cricket ball/leather ball/tennis ball/ball", "leather/season/heavy tennis/red", 300, "none"),
            "batting gloves": ("batting gloves/cricket gloves/gloves", "padded/right hand/left hand/lightweight", 900, "none"),
        },
        "cycling": {
            "bicycle": ("bicycle/cycle/mountain bike/road bike", "21 speed/26t/disc brake/steel frame", 9000, "none"),
            "cycle helmet": ("cycle helmet/helmet/bicycle helmet/safety helmet", "lightweight/ventilated/adjustable", 900, "none"),
        },
        "racket sports": {
            "badminton racket": ("badminton racket/racquet/racket/badminton racquet", "carbon/graphite/lightweight/strung", 1200, "none"),
            "shuttlecock": ("shuttlecock/shuttle/feather shuttle/nylon shuttle", "feather/nylon/tournament/speed 77", 900, "pcs"),
        },
    },
    "baby care": {
        "diapering": {
            "diapers": ("diapers/diaper pants/baby diapers/pant style diapers", "newborn/small/medium/large/overnight", 700, "pcs"),
            "baby wipes": ("baby wipes/wet wipes/wipes/water wipes", "fragrance free/aloe vera/99% water/gentle", 150, "pcs"),
            "rash cream": ("diaper rash cream/rash cream/baby cream/barrier cream", "zinc oxide/gentle/soothing", 220, "g"),
        },
        "baby food": {
            "infant formula": ("infant formula/baby formula/formula milk/milk powder", "stage 1/stage 2/stage 3", 650, "g"),
            "baby cereal": ("baby cereal/cereal/rice cereal/wheat apple cereal", "stage 2/wheat apple/rice/multigrain", 280, "g"),
        },
        "baby bath & skin": {
            "baby shampoo": ("baby shampoo/tear-free shampoo/shampoo/baby wash", "no tears/mild/gentle/chamomile", 220, "ml"),
            "baby lotion": ("baby lotion/lotion/baby cream/moisturising lotion", "mild/shea butter/gentle", 230, "ml"),
            "baby oil": ("baby oil/massage oil/oil/baby massage oil", "almond/olive/gentle", 190, "ml"),
        },
        "baby gear": {
            "stroller": ("stroller/pram/baby stroller/buggy", "foldable/reversible/lightweight", 6500, "none"),
            "feeding bottle": ("feeding bottle/baby bottle/bottle/sipper", "bpa free/anti-colic/glass/wide neck", 300, "ml"),
        },
    },
    "automotive": {
        "car care": {
            "car shampoo": ("car shampoo/car wash/car wash liquid/shampoo", "ph neutral/foam/wax", 350, "ml"),
            "car polish": ("car polish/car wax/polish/paste wax", "liquid/ceramic/shine", 450, "ml"),
        },
        "car accessories": {
            "seat cover": ("car seat cover/seat cover/seat covers/cushion cover", "leatherette/fabric/custom fit", 3500, "none"),
            "phone holder": ("car phone holder/phone holder/mobile holder/mount", "dashboard/magnetic/vent clip", 450, "none"),
            "air freshener": ("car air freshener/air freshener/car perfume/freshener", "gel/lemon/lavender/aqua", 250, "none"),
        },
        "bike accessories": {
            "bike helmet": ("bike helmet/helmet/full face helmet/motorcycle helmet", "isi marked/full face/open face", 1600, "none"),
            "bike cover": ("bike cover/two wheeler cover/scooty cover/cover", "waterproof/dust proof", 400, "none"),
            "riding gloves": ("riding gloves/bike gloves/gloves", "full finger/knuckle guard/breathable", 600, "none"),
        },
        "oils & fluids": {
            "engine oil": ("engine oil/motor oil/4t engine oil/synthetic oil", "10w-30/20w-40/fully synthetic", 450, "ml"),
            "coolant": ("coolant/radiator coolant/antifreeze", "ready to use/concentrate/green", 350, "ml"),
        },
    },
}

# Invented brand names; a few are shared by two supergroups.
BRANDS: dict[str, list[str]] = {
    "grocery": ["Green Harbor", "Nutrivale", "Harvest 7", "Kornwell", "Saffire Fields", "Daily Basket", "Pelora", "Mira & Moss"],
    "beauty & personal care": ["Lumessa", "Dewpetal", "Auric Bloom", "Mira & Moss", "Velora Labs", "Skinvia", "Nova & Co", "Pure 9"],
    "home & kitchen": ["Nova & Co", "Hearthly", "Kitchora", "Ovalia Home", "Brightnest", "Urban Loom", "Cookwell 360"],
    "clothing": ["Urban Loom", "Threadline", "Vastra & Sons", "Denimora", "Stridewell", "Kotta", "Fabrik 21", "Aeroknit"],
    "electronics": ["Zentrix 9", "Voltaro", "Boltix", "Sonique", "Pixelon", "Quantra", "Ampera One"],
    "sports": ["Stridewell", "Fitrova", "Willowcraft", "Peakline", "Smashpro", "Aeroknit", "Gritbay"],
    "baby care": ["Green Harbor", "Little Sprout", "Cuddlebee", "Tinytoes & Co", "Nestlyn", "Babyora"],
    "automotive": ["Zentrix 9", "Roadmaxx", "Gearwala", "Torquefield", "Autoglam 7", "Motiva Drive"],
}

# size unit -> [(size text, price factor)]
SIZES: dict[str, list[tuple[str, float]]] = {
    "ml": [("100 ml", 0.3), ("200 ml", 0.55), ("250 ml", 0.65), ("500 ml", 1.0), ("1 L", 1.8), ("1.5 L", 2.5)],
    "g": [("50 g", 0.25), ("100 g", 0.45), ("200 g", 0.75), ("250 g", 0.85), ("500 g", 1.0), ("1 kg", 1.8)],
    "kg": [("1 kg", 1.0), ("1.5 kg", 1.4), ("2 kg", 1.8), ("5 kg", 4.2), ("10 kg", 8.0)],
    "pcs": [("6 pcs", 0.4), ("10 pcs", 0.6), ("20 pcs", 1.0), ("30 pcs", 1.4), ("50 pcs", 2.2), ("64 pcs", 2.7)],
    "gb": [("32 GB", 0.7), ("64 GB", 0.85), ("128 GB", 1.0), ("256 GB", 1.3), ("512 GB", 1.7), ("1 TB", 2.3)],
    "apparel": [("S", 1.0), ("M", 1.0), ("L", 1.0), ("XL", 1.05), ("XXL", 1.1)],
    "shoe": [("UK 6", 1.0), ("UK 7", 1.0), ("UK 8", 1.0), ("UK 9", 1.02), ("UK 10", 1.05)],
    "waist": [("28", 1.0), ("30", 1.0), ("32", 1.0), ("34", 1.0), ("36", 1.05)],
    "inch": [("32 inch", 0.55), ("43 inch", 1.0), ("50 inch", 1.3), ("55 inch", 1.6), ("65 inch", 2.4)],
    "w": [("500 W", 0.8), ("750 W", 1.0), ("1000 W", 1.3)],
    "ltr": [("2 L", 0.8), ("3 L", 1.0), ("5 L", 1.4)],
    "mah": [("5000 mAh", 0.7), ("10000 mAh", 1.0), ("20000 mAh", 1.6)],
    "none": [("", 1.0)],
}
COLOURFUL = {"home & kitchen", "clothing", "electronics", "sports", "automotive"}
COLOURS = ["Black", "White", "Blue", "Red", "Navy Blue", "Grey", "Green", "Beige", "Maroon", "Pink", "Silver", "Olive"]
MARKETING = ["Premium", "New", "Combo", "Best Seller", "Original", "Value Pack", "Super Saver", "Pro", "Classic", "Festive Offer"]
USES: dict[str, list[str]] = {
    "grocery": ["everyday cooking", "the whole family", "a quick snack", "healthy living"],
    "beauty & personal care": ["daily use", "all skin types", "a fresh feel every day"],
    "home & kitchen": ["modern kitchens", "everyday home use", "a clean and cosy home"],
    "clothing": ["casual outings", "all-day comfort", "office and travel"],
    "electronics": ["work and play", "everyday entertainment", "home and office"],
    "sports": ["daily workouts", "training and matches", "outdoor play"],
    "baby care": ["your little one", "delicate baby skin", "newborns and toddlers"],
    "automotive": ["cars and bikes", "long drives", "regular maintenance"],
}
TEMPLATES = [
    "{mk} {attr} {noun} {colour} {size} {pack}",
    "{attr} {noun} {size} {colour} {pack}",
    "{noun} - {attr} {colour}, {size} {pack}",
    "{mk} {noun} ({attr}) {colour} {size} {pack}",
    "{attr} {colour} {noun} {pack} {size}",
    "{noun} {attr} {size} {mk} {pack}",
]
SENTENCES = ["{attr} {noun} for {use}.", "This {noun} is {attr} and {attr2}.", "Perfect for {use}.",
             "A {attr} choice for {use}.", "Easy to use and long lasting.", "Made with care for {use}."]
BRAND_SENTENCES = ["From {brand}, a trusted name.", "{brand} {noun} made for {use}.", "By {brand}."]
_UNIT_WORDS = {"ml", "g", "kg", "pcs", "x", "of"}
_GLUE = "\x00"


class CategoryPath(NamedTuple):
    supergroup: str
    group: str
    module: str
    nouns: tuple[str, ...]
    attrs: tuple[str, ...]
    base_price: float
    unit: str


PATHS: list[CategoryPath] = [
    CategoryPath(sg, g, m, tuple(n.split("/")), tuple(a.split("/")), float(p), u)
    for sg, groups in TAXONOMY.items() for g, modules in groups.items() for m, (n, a, p, u) in modules.items()
]

# (supergroup, group) -> the attributes of all its modules, so siblings share some title words
GROUP_ATTRS: dict[tuple[str, str], tuple[str, ...]] = {
    (sg, g): tuple(dict.fromkeys(a for _, attrs, _, _ in modules.values() for a in attrs.split("/")))
    for sg, groups in TAXONOMY.items() for g, modules in groups.items()
}


def _size(rng: random.Random, unit: str) -> tuple[str, float]:
    text, factor = rng.choice(SIZES[unit])
    if not text:
        return "", factor
    if unit in ("apparel", "waist", "shoe"):
        return rng.choice([f"Size {text}", text, f"({text})"]), factor
    r = rng.random()
    if r < 0.3:
        text = text.replace(" ", "")
    elif r < 0.4:
        text = text.upper()
    return text, factor


def _noisy_word(rng: random.Random, word: str) -> str:
    """Rare typos (swap or drop a character) and random casing of single words."""
    if len(word) >= 4 and word.isalpha() and rng.random() < 0.03:
        i = rng.randrange(len(word) - 1)
        word = word[:i] + word[i + 1] + word[i] + word[i + 2:] if rng.random() < 0.5 else word[:i] + word[i + 1:]
    if rng.random() < 0.03:
        word = word.upper() if rng.random() < 0.6 else word.lower()
    return word


def _clean(text: str) -> str:
    text = re.sub(r"\(\s*\)", " ", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+,", ",", text)
    text = re.sub(r"[-,]\s*(?=[-,]|$)", "", text)
    text = re.sub(r"\s+,", ",", text)
    return re.sub(r"\s+", " ", text).strip(" ,-")


def _title(rng: random.Random, path: CategoryPath, brand: str, brand_in_title: bool) -> tuple[str, float, int]:
    """Returns (title, size price factor, pack count)."""
    attrs = path.attrs if rng.random() < 0.75 else GROUP_ATTRS[path.supergroup, path.group]
    attr = rng.choice(attrs) if rng.random() < 0.9 else ""
    if attr and rng.random() < 0.25:
        attr2 = rng.choice(path.attrs)
        attr = attr if attr2 == attr else f"{attr} {attr2}"
    noun, r = rng.choice(path.nouns), rng.random()
    if r < 0.15:  # generic noun: only the group is inferable from the title
        noun = rng.choice([path.group, f"{path.group} essentials", f"{path.group} combo"])
    elif r < 0.18 and attr:  # no noun at all, as in "Brand Herbal 200 ml"
        noun = ""
    size, factor = _size(rng, path.unit)
    pack_n = rng.choice([2, 3, 4, 6, 12]) if path.base_price < 1000 and rng.random() < 0.15 else 1
    pack = ""
    if pack_n > 1:
        fmt = rng.choice(["Pack of {n}", "(Pack of {n})", "{n} x", "Set of {n}", "Combo of {n}"])
        if fmt == "{n} x" and size and path.unit in ("ml", "g", "kg", "pcs"):
            size = f"{pack_n} x {size}"
        else:
            pack = (fmt if fmt != "{n} x" else "Pack of {n}").format(n=pack_n)
    colour = rng.choice(COLOURS) if path.supergroup in COLOURFUL and rng.random() < 0.5 else ""
    mk = rng.choice(MARKETING) if rng.random() < 0.3 else ""
    parts = dict(mk=mk, attr=attr, noun=noun, colour=colour, size=size, pack=pack)
    glued = {k: v.replace(" ", _GLUE) for k, v in parts.items()}  # keep phrases whole while placing the brand
    phrases = _clean(rng.choice(TEMPLATES).format(**glued)).split()
    if brand_in_title:
        phrases.insert(0 if rng.random() < 0.85 else rng.randint(1, len(phrases)), brand.replace(" ", _GLUE))
    words = " ".join(phrases).replace(_GLUE, " ").split()
    style = rng.random()
    if style < 0.55:
        words = [w if w.lower() in _UNIT_WORDS else w[:1].upper() + w[1:] for w in words]
    elif style < 0.6:
        words = [w.upper() for w in words]
    return " ".join(_noisy_word(rng, w) for w in words), factor, pack_n


def _description(rng: random.Random, path: CategoryPath, brand: str, mention_brand: bool) -> str:
    attrs = [rng.choice(path.attrs), rng.choice(path.attrs)]
    fill = dict(noun=rng.choice(path.nouns), attr=attrs[0], attr2=attrs[1], use=rng.choice(USES[path.supergroup]),
                brand=brand)
    sentences = rng.sample(SENTENCES, rng.randint(1, 2))
    if mention_brand:
        sentences[rng.randrange(len(sentences))] = rng.choice(BRAND_SENTENCES)
    texts = [s.format(**fill) for s in sentences]
    return " ".join(t[:1].upper() + t[1:] for t in texts)


def generate_catalog(n_rows: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Return ``n_rows`` synthetic products; identical for the same ``(n_rows, seed)``."""
    rng = random.Random(seed)
    all_brands = sorted({b for names in BRANDS.values() for b in names})
    premium = {b: rng.lognormvariate(0.0, 0.35) for b in all_brands}
    cum_weights, total = [], 0.0
    for _ in PATHS:
        total += rng.lognormvariate(0.0, 0.4)
        cum_weights.append(total)
    rows: list[tuple] = []
    for _ in range(n_rows):
        if rows and rng.random() < 0.10:  # a size/colour variant of a recent product: same title
            prev = rows[rng.randrange(max(0, len(rows) - 50), len(rows))]
            price = max(0.01, round(prev[6] * rng.lognormvariate(0.0, 0.2), 2))
            rows.append((*prev[:6], price, ""))
            continue
        path = rng.choices(PATHS, cum_weights=cum_weights)[0]
        brand = "" if rng.random() < 0.05 else rng.choice(BRANDS[path.supergroup])
        in_title = bool(brand) and rng.random() < 0.75
        title, size_factor, pack_n = _title(rng, path, brand, in_title)
        description = ""
        if rng.random() >= 0.4:
            mention = bool(brand) and rng.random() < (0.2 if in_title else 0.6)
            description = _description(rng, path, brand, mention)
        pack_factor = pack_n * 0.92 if pack_n > 1 else 1.0
        price = (path.base_price * rng.lognormvariate(0.0, 0.25) * premium.get(brand, 0.8)
                 * size_factor * pack_factor)
        rows.append((title, description, path.supergroup, path.group, path.module, brand,
                     max(0.01, round(price, 2)), ""))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({**{c: str for c in COLUMNS if c != "price"}, "price": "float64"})
