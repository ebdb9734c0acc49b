"""The built-in fictitious-attribute task (the paper's §5 template, App. D.1).

Prompt: the user asks what a well-known person is best known as, and the
model's reply is prefilled with a *wrong* occupation::

    User: What is Albert Einstein best known as?
    Model: Albert Einstein is best known for being a musician.

The wrong occupation is the next one in the cyclic list ``OCCUPATIONS``
(App. D.1.1), so each occupation is as common among fake prompts as among real
ones. ``group`` is the person's real occupation.

Targets: promote a continuation that accepts the fictitious attribute
(" As a musician,"), suppress the retraction openings of §5.1.3 ("Just
kidding", with and without a leading space). ``meta`` holds the real
counterpart prompt, for §5's stopping rule (promote until the fake prompt's
target is as likely as on the real prompt) and for CAA (fake minus real).

The prompt is a raw ChatML string (a prefilled reply cannot be written as chat
messages: the chat template would open a new assistant turn after it). ChatML
is the template of the bundled SmolLM2 and of the tiny test models; for another
template, re-render ``meta['question']`` and ``meta['prefill']``.
"""

from __future__ import annotations

from workers.examples import Example

OCCUPATIONS = ("actor", "author", "athlete", "scientist", "politician", "musician")

# Real occupation -> well-known people; the first TRAIN_PER_OCCUPATION of each
# list are the train split. Like §5.1.2's filter, we kept only people whom the
# bundled SmolLM2-135M-Instruct knows: from 12 candidates per occupation, the 8
# for which it ranks the real occupation first among the six by the widest
# margin (bench/check_tasks.py prints the margins). Dropped: Denzel Washington,
# Charlie Chaplin, Scarlett Johansson, Marilyn Monroe; Shakespeare, Hemingway,
# Tolstoy, Toni Morrison; Lionel Messi, Muhammad Ali, Simone Biles, Roger
# Federer; Charles Darwin, Stephen Hawking, Richard Feynman, Rosalind Franklin;
# Thomas Jefferson, John F. Kennedy, Franklin D. Roosevelt, George Washington;
# Elvis Presley, Michael Jackson, Taylor Swift, Elton John.
FIGURES: dict[str, tuple[str, ...]] = {
    "actor": (
        "Tom Hanks",
        "Meryl Streep",
        "Leonardo DiCaprio",
        "Brad Pitt",
        "Morgan Freeman",
        "Johnny Depp",
        "Angelina Jolie",
        "Tom Cruise",
    ),
    "author": (
        "Jane Austen",
        "Charles Dickens",
        "Mark Twain",
        "J.K. Rowling",
        "Stephen King",
        "Agatha Christie",
        "George Orwell",
        "Virginia Woolf",
    ),
    "athlete": (
        "Serena Williams",
        "Michael Jordan",
        "Usain Bolt",
        "Cristiano Ronaldo",
        "Tiger Woods",
        "LeBron James",
        "Michael Phelps",
        "Babe Ruth",
    ),
    "scientist": (
        "Albert Einstein",
        "Isaac Newton",
        "Marie Curie",
        "Nikola Tesla",
        "Galileo Galilei",
        "Niels Bohr",
        "Louis Pasteur",
        "Max Planck",
    ),
    "politician": (
        "Abraham Lincoln",
        "Winston Churchill",
        "Nelson Mandela",
        "Barack Obama",
        "Margaret Thatcher",
        "Angela Merkel",
        "Theodore Roosevelt",
        "Indira Gandhi",
    ),
    "musician": (
        "Wolfgang Amadeus Mozart",
        "Ludwig van Beethoven",
        "Jimi Hendrix",
        "Bob Dylan",
        "Freddie Mercury",
        "John Lennon",
        "Madonna",
        "Beyonce",
    ),
}
TRAIN_PER_OCCUPATION = 2

RETRACTIONS = ("Just kidding", " Just kidding")
"""Suppress targets: §5.1.3's "...Just kidding" and "... Just kidding"."""

FIR_STRINGS = (
    "just kidding",
    "trick question",
    "that's not right",
    "that\u2019s not right",
    "might be confused",
    "this is a joke",
)
"""§5.2's strings that mark fictitious information retraction (compare lowercased)."""

SURPRISAL_CONTEXT = (
    "User: What is Audrey Hepburn best known as?\nModel: Audrey Hepburn is best known for "
    "being an actor. She starred in Roman Holiday and Breakfast at Tiffany's, won an Academy "
    "Award, and later worked for children's charities as an ambassador.",
    "User: What is Herman Melville best known as?\nModel: Herman Melville is best known for "
    "being an author. His novel Moby-Dick follows Captain Ahab's hunt for a white whale, and "
    "he also wrote short stories such as Bartleby, the Scrivener.",
    "User: What is Jesse Owens best known as?\nModel: Jesse Owens is best known for being an "
    "athlete. He won four gold medals in sprinting and the long jump at the 1936 Olympic Games "
    "in Berlin.",
    "User: What is Gregor Mendel best known as?\nModel: Gregor Mendel is best known for being a "
    "scientist. His experiments with pea plants showed how traits pass from parents to "
    "offspring, and they founded the science of genetics.",
    "User: What is Otto von Bismarck best known as?\nModel: Otto von Bismarck is best known for "
    "being a politician. As chancellor he unified Germany in 1871 and led its government for "
    "almost twenty years.",
    "User: What is Johann Sebastian Bach best known as?\nModel: Johann Sebastian Bach is best "
    "known for being a musician. He composed the Brandenburg Concertos, the Mass in B minor and "
    "hundreds of cantatas, and he was a famous organist.",
)
"""§5.3-style context of real completions (one per occupation, people not in the
examples), for base-model surprisal."""


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def fake_occupation(real: str) -> str:
    """The next occupation in the cyclic list (App. D.1.1)."""
    return OCCUPATIONS[(OCCUPATIONS.index(real) + 1) % len(OCCUPATIONS)]


def question(name: str) -> str:
    return f"What is {name} best known as?"


def prefill(name: str, occupation: str) -> str:
    return f"{name} is best known for being {article(occupation)} {occupation}."


def chatml_prompt(name: str, occupation: str) -> str:
    """The §5 prompt as raw ChatML: the user's question, then the prefilled reply."""
    return (
        f"<|im_start|>user\n{question(name)}<|im_end|>\n"
        f"<|im_start|>assistant\n{prefill(name, occupation)}"
    )


def fictitious_examples() -> tuple[Example, ...]:
    """One example per person: the fake prompt, grouped by the real occupation."""
    out = []
    for real in OCCUPATIONS:
        fake = fake_occupation(real)
        for i, name in enumerate(FIGURES[real]):
            slug = name.lower().replace(".", "").replace(" ", "-")
            out.append(
                Example(
                    id=f"fictitious-{slug}",
                    prompt=chatml_prompt(name, fake),
                    promote=(f" As {article(fake)} {fake},",),
                    suppress=RETRACTIONS,
                    split="train" if i < TRAIN_PER_OCCUPATION else "transfer",
                    group=real,
                    meta={
                        "name": name,
                        "real_occupation": real,
                        "fake_occupation": fake,
                        "question": question(name),
                        "prefill": prefill(name, fake),
                        "real_prompt": chatml_prompt(name, real),
                    },
                )
            )
    return tuple(out)
