"""Text for the language-ID, PII and web-chain corpora: hand-written sentences in eight
languages, generators of e-mail addresses and public IPs with the look-alike traps a PII masker
must leave alone (or change exactly as datatrove does), and `build_web_corpus`, the generated
sample corpus (tests/sample_corpus.py) made web-like for the full web chain (language ID,
Gopher, C4, FineWeb, MinHash, PII): some pages rewritten in other languages, some English pages
with a foreign paragraph, PII and traps planted in others.

Test and benchmark data, not part of the package: tests/test_curate_language.py,
tests/test_curate_pii.py and benchmarks/curate.py draw on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import random

from sample_corpus import SampleCorpus, build_sample_corpus

# Sentences written by hand (not machine-translated), 12 per language, the same meanings across
# languages so no language is easier because of its topic.
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


# Traps that must come out unchanged (private/reserved addresses, no fourth octet, leading zeros,
# no dot in the domain, not an address at all).
KEEP_TRAPS = [
    "10.0.0.1", "10.12.7.200", "192.168.1.1", "192.168.0.254", "127.0.0.1", "172.16.5.4", "172.31.255.1",
    "169.254.10.20", "0.0.0.0", "255.255.255.255", "100.64.1.2", "010.001.002.003",
    "12.03.2024", "on 31.12.1999 at noon", "v2.10.1", "3.14159", "1,234.56", "user@localhost",
    "root@localhost:22", "@handle", "name at example dot com", "a@b", "user@-bad-.com",
]  # fmt: skip
# Traps that datatrove changes and so must we, exactly (version-like strings that are global
# addresses, an address glued to more digits, multicast, which `ipaddress` calls global).
CHANGE_TRAPS = ["1.2.3.4", "version 4.4.8.1 released", "1.2.3.45678", "build 2.0.0.1-rc", "8.8.8.8.8", "224.0.0.251"]
CONTEXTS = ["Contact {} for details.", "write to {}, please", "({})", "Mail: <{}>", "{}.", "see {}!", "'{}'",
            "at {}\n", "ip={};", "[{}]", "{}:8080", '"{}"']  # fmt: skip


def random_email(rng: random.Random) -> str:
    name = rng.choice(["john", "jane.doe", "a_b", "x", "info", "sales-team", "o'neil", "Mary.Ann", "ADMIN"])
    if rng.random() < 0.3:
        name += "+" + rng.choice(["news", "tag1", "x.y"])
    domain = rng.choice(["example.com", "mail.example.org", "cs.uni-bonn.de", "a.b.c.io", "EXAMPLE.NET", "x1.co.uk"])
    address = f"{name}@{domain}"
    return address.upper() if rng.random() < 0.15 else address


def random_public_ip(rng: random.Random) -> str:
    while True:
        ip = ".".join(str(rng.randrange(256)) for _ in range(4))
        if ipaddress.ip_address(ip).is_global:
            return ip


# -- the web-chain corpus ------------------------------------------------------------------------


def foreign_page(rng: random.Random, lang: str) -> str:
    """A page of 2–4 paragraphs of 2–4 sentences in one language (not English)."""
    sentences = SENTENCES[lang]
    return "\n\n".join(" ".join(rng.sample(sentences, rng.randrange(2, 5))) for _ in range(rng.randrange(2, 5)))


def plant_pii(rng: random.Random, text: str) -> str:
    """`text` with 1–3 e-mails, public IPs or traps put in at word boundaries, each in a context
    ("Contact … for details.", "ip=…;", …)."""
    for _ in range(rng.randrange(1, 4)):
        kind = rng.random()
        if kind < 0.4:
            item = random_email(rng)
        elif kind < 0.7:
            item = random_public_ip(rng)
        elif kind < 0.9:
            item = rng.choice(KEEP_TRAPS)
        else:
            item = rng.choice(CHANGE_TRAPS)
        spaces = [i for i, c in enumerate(text) if c == " "] or [len(text)]
        at = rng.choice(spaces)
        text = f"{text[:at]} {rng.choice(CONTEXTS).format(item)}{text[at:]}"
    return text


def build_web_corpus(n_docs: int = 20_000, seed: int = 0, *, foreign: float = 0.10, mixed: float = 0.03,
                     pii: float = 0.25) -> SampleCorpus:  # fmt: skip
    """The sample corpus of `n_docs` documents, then per document, with these probabilities: its
    text replaced by a page in one of seven other languages (`foreign`), an English page given a
    foreign paragraph (`mixed`, the cases near the language threshold), PII planted (`pii`).

    Each document's changes are drawn from a generator seeded by its text, so identical texts get
    identical changes and the sample corpus's planted exact copies stay copies (its near copies
    get independent changes; the pair lists are dropped, as the texts no longer match them)."""
    base = build_sample_corpus(n_docs=n_docs, seed=seed, near_duplicates=n_docs // 12, exact_duplicates=n_docs // 48)
    others = sorted(lang for lang in SENTENCES if lang != "en")
    documents = []
    for doc in base.documents:
        digest = hashlib.blake2b(f"{seed}\0{doc['text']}".encode(), digest_size=8).digest()
        rng = random.Random(int.from_bytes(digest, "little"))
        text = doc["text"]
        roll = rng.random()
        if roll < foreign:
            text = foreign_page(rng, rng.choice(others))
        elif roll < foreign + mixed:
            text = f"{text}\n\n{foreign_page(rng, rng.choice(others)).split(chr(10))[0]}"
        if rng.random() < pii:
            text = plant_pii(rng, text)
        documents.append({**doc, "text": text})
    return dataclasses.replace(base, documents=documents, near_duplicate_pairs=[], exact_duplicate_pairs=[],
                               normalized_duplicate_pairs=[], near_duplicate_edit_fraction={})  # fmt: skip
