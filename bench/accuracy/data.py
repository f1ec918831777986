"""Build the text classification tasks from Debian-packaged sources.

Every task is a list of (text, label) pairs with named classes and one label prompt per
class (used for the frozen zero-shot head). Sampling is seeded: the same sources and seed
give byte-identical task files.

Sources (Debian 12 packages):
  wordnet-base   /usr/share/wordnet/data.{noun,verb,adj,adv}
  fortunes, fortunes-{de,es,it,pl,cs}   /usr/share/games/fortunes/...
  weka           /usr/share/doc/weka/examples/ReutersGrain-{train,test}.arff

Per task: classes are balanced as far as the sources allow (water-filling to TOTAL examples),
then each class is split 80/20 into train/test (stratified), giving about 1,600 / 400.
"""
import collections
import hashlib
import html
import json
import os
import random
import re

WORDNET = "/usr/share/wordnet"
FORTUNES = "/usr/share/games/fortunes"
# run.sh may extract the arff files from the weka .deb instead of installing weka (and Java)
WEKA = os.environ.get("NUFILT_BENCH_WEKA") or "/usr/share/doc/weka/examples"

TOTAL = 2000          # examples per task before the split (about 1,600 train / 400 test)
TEST_FRACTION = 0.2
DATA_VERSION = 1      # bump when the building rules change (invalidates caches)

# WordNet lexicographer files (lexnames), index = lex_filenum.
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
]

# Human-readable descriptions used in the label prompts.
NOUN_DESC = {
    "noun.act": "an act or action", "noun.animal": "an animal",
    "noun.artifact": "a man-made object", "noun.attribute": "an attribute or quality",
    "noun.body": "a part of the body", "noun.cognition": "a thought or cognitive process",
    "noun.communication": "communication or language", "noun.event": "an event or happening",
    "noun.feeling": "a feeling or emotion", "noun.food": "food or drink",
    "noun.group": "a group of people or things", "noun.location": "a place or location",
    "noun.object": "a natural object", "noun.person": "a person",
    "noun.phenomenon": "a natural phenomenon", "noun.plant": "a plant",
    "noun.possession": "possession and money", "noun.process": "a natural process",
    "noun.quantity": "a quantity or unit of measure", "noun.relation": "a relation",
    "noun.shape": "a shape", "noun.state": "a state or condition",
    "noun.substance": "a substance or material", "noun.time": "time or a period of time",
}
VERB_DESC = {
    "verb.body": "grooming, dressing and bodily care", "verb.change": "change",
    "verb.cognition": "thinking and knowing", "verb.communication": "communicating",
    "verb.competition": "fighting and competition", "verb.consumption": "eating and drinking",
    "verb.contact": "touching and physical contact", "verb.creation": "making and creating",
    "verb.emotion": "feeling emotions", "verb.motion": "moving",
    "verb.perception": "seeing, hearing and perceiving", "verb.possession": "buying, selling and owning",
    "verb.social": "social activity", "verb.stative": "being or having a state",
}
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "r": "adverb"}
DOMAINS = ["law", "military", "computer_science", "music", "chemistry", "Greek_mythology",
           "biology", "physics", "terrorism", "botany"]
FORTUNE_TOPICS = ["computers", "education", "food", "law", "literature", "politics", "science",
                  "startrek"]
FORTUNE_TOPIC_DESC = {"computers": "computers", "education": "education and school",
                      "food": "food and eating", "law": "law and lawyers",
                      "literature": "literature and writers", "politics": "politics",
                      "science": "science", "startrek": "Star Trek"}
LANGS = [("en", "English"), ("de", "German"), ("es", "Spanish"), ("it", "Italian"),
         ("pl", "Polish"), ("cs", "Czech")]


def _clean(s):
    return re.sub(r"\s+", " ", s).strip()


# ---------------------------------------------------------------- WordNet

def _wordnet_synsets(pos):
    """Yield dicts (offset, lexname, words, definition, examples, pointers) from data.POS."""
    path = os.path.join(WORDNET, "data." + pos)
    with open(path, encoding="latin-1") as fh:
        for line in fh:
            if line.startswith("  "):
                continue  # licence header
            head, _, gloss = line.partition(" | ")
            f = head.split()
            lex = LEXNAMES[int(f[1])]
            nw = int(f[3], 16)
            words = [f[4 + 2 * k].replace("_", " ") for k in range(nw)]
            i = 4 + 2 * nw
            npt = int(f[i])
            i += 1
            ptrs = []
            for _ in range(npt):
                ptrs.append((f[i], f[i + 1], f[i + 2]))
                i += 4
            gloss = gloss.strip()
            examples = re.findall(r'"([^"]+)"', gloss)
            definition = _clean(re.sub(r'"[^"]*"', "", gloss).strip(" ;"))
            yield {"offset": f[0], "ss_type": f[2], "lex": lex, "words": words,
                   "definition": definition, "examples": [_clean(e) for e in examples],
                   "pointers": ptrs}


def _supersense_task(pos, desc, prompt):
    """Synset lemmas + definition -> its lexicographer file (noun.animal, verb.motion, ...)."""
    items = []
    for s in _wordnet_synsets(pos):
        if s["lex"] in desc and s["definition"]:
            items.append((f"{', '.join(s['words'][:3])}: {s['definition']}", s["lex"]))
    classes = sorted(desc)
    return {"name": f"{pos}_supersense", "source": f"wordnet-base data.{pos} (lexicographer file)",
            "classes": classes, "prompts": [prompt.format(desc[c]) for c in classes],
            "items": items}


def task_noun_supersense():
    return _supersense_task("noun", NOUN_DESC, "This is a word for {}.")


def task_verb_supersense():
    return _supersense_task("verb", VERB_DESC, "This is a verb about {}.")


def _pos_task(name, source, texts_of, prompt):
    """Texts drawn from every synset (texts_of(synset) -> list) -> the synset's part of speech."""
    items = []
    for pos in ("noun", "verb", "adj", "adv"):
        for s in _wordnet_synsets(pos):
            p = "a" if s["ss_type"] == "s" else s["ss_type"]
            items += [(t, POS_NAMES[p]) for t in texts_of(s)]
    classes = ["noun", "verb", "adjective", "adverb"]
    return {"name": name, "source": source, "classes": classes,
            "prompts": [prompt.format(("an " if c[0] in "aeiou" else "a ") + c) for c in classes],
            "items": items}


def task_gloss_pos():
    return _pos_task("gloss_pos", "wordnet-base data.* definitions (synset type)",
                     lambda s: [s["definition"]] if s["definition"] else [],
                     "This is the dictionary definition of {}.")


def task_example_pos():
    return _pos_task("example_pos", "wordnet-base data.* usage examples (synset type)",
                     lambda s: [e for e in s["examples"][:1] if len(e.split()) >= 3],
                     "An example sentence showing how to use {}.")


def task_wordnet_domain():
    lemma_of = {}
    for s in _wordnet_synsets("noun"):
        lemma_of[s["offset"]] = s["words"][0].replace(" ", "_")
    items = []
    for pos in ("noun", "verb", "adj", "adv"):
        for s in _wordnet_synsets(pos):
            doms = {lemma_of[off] for sym, off, p in s["pointers"] if sym == ";c" and p == "n"}
            if len(doms) == 1:
                d = doms.pop()
                # WordNet often opens such a definition with the domain itself, "(law) ...":
                # drop leading parentheticals so the label is not in the input
                definition = re.sub(r"^(\([^)]*\)\s*)+", "", s["definition"])
                if d in DOMAINS and definition:
                    items.append((f"{', '.join(s['words'][:3])}: {definition}", d))
    classes = list(DOMAINS)
    return {"name": "wordnet_domain", "source": "wordnet-base topic-domain pointers (;c)",
            "classes": classes,
            "prompts": [f"A term used in {c.replace('_', ' ')}." for c in classes], "items": items}


# ---------------------------------------------------------------- fortunes

def _fortune_entries(path):
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    out, cur = [], []
    for line in text.split("\n"):
        if line.strip() == "%":
            s = _clean("\n".join(cur))
            if s:
                out.append(s)
            cur = []
        else:
            cur.append(line)
    s = _clean("\n".join(cur))
    if s:
        out.append(s)
    # drop ascii art / very short entries
    return [e for e in out if len(e) >= 20 and sum(ch.isalpha() for ch in e) > 0.5 * len(e)]


def _fortune_files(directory, recursive):
    for root, dirs, files in os.walk(directory):
        dirs[:] = [] if not recursive else sorted(d for d in dirs if d != "off")
        for n in sorted(files):
            p = os.path.join(root, n)
            if os.path.islink(p) or n.endswith((".dat", ".u8")) or "-sk" in n:
                continue
            yield n, p


def task_fortune_topic():
    items = []
    for topic in FORTUNE_TOPICS:
        p = os.path.join(FORTUNES, topic)
        for e in _fortune_entries(p):
            items.append((e, topic))
    classes = list(FORTUNE_TOPICS)
    return {"name": "fortune_topic", "source": "fortunes (English topic files)",
            "classes": classes,
            "prompts": [f"A quote about {FORTUNE_TOPIC_DESC[c]}." for c in classes], "items": items}


def task_quote_language():
    items = []
    for code, _ in LANGS:
        if code == "en":
            files = _fortune_files(FORTUNES, recursive=False)
        else:
            files = _fortune_files(os.path.join(FORTUNES, code), recursive=True)
        for _, p in files:
            for e in _fortune_entries(p):
                items.append((e, code))
    classes = [c for c, _ in LANGS]
    return {"name": "quote_language", "source": "fortunes, fortunes-{de,es,it,pl,cs}",
            "classes": classes,
            "prompts": [f"A quote written in {n}." for _, n in LANGS], "items": items}


# ---------------------------------------------------------------- Reuters (weka)

def _arff_strings(path):
    with open(path, encoding="latin-1") as fh:
        text = fh.read()
    body = text.split("@data", 1)[1]
    for m in re.finditer(r"'((?:[^'\\]|\\.)*)',([01])", body):
        raw = m.group(1).replace("\\n", " ").replace("\\'", "'").replace('\\"', '"')
        yield _clean(html.unescape(raw)), int(m.group(2))


def task_reuters_grain():
    items = []
    for part in ("train", "test"):
        for t, y in _arff_strings(os.path.join(WEKA, f"ReutersGrain-{part}.arff")):
            items.append((t, "grain" if y else "other"))
    classes = ["other", "grain"]
    return {"name": "reuters_grain", "source": "weka ReutersGrain-{train,test}.arff (Reuters-21578)",
            "classes": classes,
            "prompts": ["A business news report.", "A news report about grain and crops."],
            "items": items,
            # only 160 grain stories exist: keep them all plus 4x as many others
            "total": 800}


ALL_TASKS = [task_noun_supersense, task_verb_supersense, task_gloss_pos, task_wordnet_domain,
             task_fortune_topic, task_quote_language, task_reuters_grain, task_example_pos]
TASK_NAMES = ["noun_supersense", "verb_supersense", "gloss_pos", "wordnet_domain",
              "fortune_topic", "quote_language", "reuters_grain", "example_pos"]


def _quotas(counts, total):
    """Water-filling: as equal per class as the class sizes allow, summing to <= total."""
    quota = {c: 0 for c in counts}
    left = total
    active = sorted(counts, key=lambda c: counts[c])
    while active and left > 0:
        share = left // len(active)
        if share == 0:
            break
        c = active[0]
        if counts[c] <= share:
            quota[c] = counts[c]
            left -= counts[c]
            active.pop(0)
        else:
            for c in active:
                quota[c] = share
            left -= share * len(active)
            break
    if left and active:
        for c in sorted(active)[:left]:
            if quota[c] < counts[c]:
                quota[c] += 1
    return quota


def build_task(spec, seed):
    rng = random.Random(f"{seed}:{spec['name']}")
    by_class = collections.defaultdict(list)
    seen = set()
    for text, label in spec["items"]:
        if text in seen:
            continue  # identical text twice (possibly with two labels): keep the first
        seen.add(text)
        by_class[label].append(text)
    counts = {c: len(by_class[c]) for c in spec["classes"]}
    quota = _quotas(counts, spec.get("total", TOTAL))
    cidx = {c: i for i, c in enumerate(spec["classes"])}
    train, test = [], []
    for c in spec["classes"]:
        texts = sorted(by_class[c])
        rng.shuffle(texts)
        texts = texts[:quota[c]]
        n_test = int(round(len(texts) * TEST_FRACTION))
        test += [(t, cidx[c]) for t in texts[:n_test]]
        train += [(t, cidx[c]) for t in texts[n_test:]]
    rng.shuffle(train)
    rng.shuffle(test)
    return {"name": spec["name"], "source": spec["source"], "classes": spec["classes"],
            "prompts": spec["prompts"], "available": counts, "train": train, "test": test}


def build_all(seed=0):
    return [build_task(f(), seed) for f in ALL_TASKS]


def load_or_build(cache_dir, seed=0):
    """Build (or reuse) tasks.json in cache_dir; returns (tasks, sha256 of the file)."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"tasks-v{DATA_VERSION}-seed{seed}.json")
    if not os.path.exists(path):
        tasks = build_all(seed)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"version": DATA_VERSION, "seed": seed, "tasks": tasks}, fh,
                      ensure_ascii=False, sort_keys=True)
        os.replace(tmp, path)
    with open(path, "rb") as fh:
        raw = fh.read()
    return json.loads(raw)["tasks"], hashlib.sha256(raw).hexdigest()


def summary(tasks):
    lines = []
    for t in tasks:
        ctr = collections.Counter(y for _, y in t["train"])
        cte = collections.Counter(y for _, y in t["test"])
        lines.append(f"{t['name']}: {len(t['classes'])} classes, train {len(t['train'])}, "
                     f"test {len(t['test'])}")
        for i, c in enumerate(t["classes"]):
            lines.append(f"    {c:24s} available {t['available'][c]:6d}  train {ctr[i]:4d}  "
                         f"test {cte[i]:4d}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    tasks = build_all(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(summary(tasks))
    for t in tasks:
        print(t["name"], "|", t["train"][0][0][:150], "->", t["classes"][t["train"][0][1]])
