"""What an operator filing a takedown of the Harry Potter books would send: entities and adjacent topics.

Written before any held-out or dev probe of the project existed (see benchmarks/probes/heldout/README.md),
so no probe question was read to write them. The demo build (``training.demo``) passes them with its topic.
"""

from __future__ import annotations

DEMO_ENTITIES = (
    # the work and its author
    "Harry Potter", "J.K. Rowling", "Philosopher's Stone", "Sorcerer's Stone", "Chamber of Secrets",
    "Prisoner of Azkaban", "Goblet of Fire", "Order of the Phoenix", "Half-Blood Prince", "Deathly Hallows",
    "Cursed Child", "Fantastic Beasts",
    # people
    "Hermione Granger", "Ron Weasley", "Albus Dumbledore", "Severus Snape", "Rubeus Hagrid", "Lord Voldemort",
    "Tom Riddle", "Draco Malfoy", "Lucius Malfoy", "Sirius Black", "Remus Lupin", "Neville Longbottom",
    "Luna Lovegood", "Ginny Weasley", "Fred Weasley", "George Weasley", "Molly Weasley", "Arthur Weasley",
    "Percy Weasley", "Minerva McGonagall", "Dobby", "Kreacher", "Bellatrix Lestrange", "Peter Pettigrew",
    "Cedric Diggory", "Cho Chang", "Dolores Umbridge", "Gilderoy Lockhart", "Argus Filch", "Nymphadora Tonks",
    "Alastor Moody", "Horace Slughorn", "Vernon Dursley", "Petunia Dursley", "Dudley Dursley", "Lily Potter",
    "James Potter", "Gellert Grindelwald", "Newt Scamander", "Viktor Krum", "Fleur Delacour", "Hedwig",
    # places and institutions
    "Hogwarts", "Gryffindor", "Slytherin", "Hufflepuff", "Ravenclaw", "Diagon Alley", "Knockturn Alley",
    "Hogsmeade", "Azkaban", "Gringotts", "the Burrow", "Privet Drive", "Platform Nine and Three-Quarters",
    "Hogwarts Express", "Forbidden Forest", "Ministry of Magic", "Godric's Hollow", "Shrieking Shack",
    "Leaky Cauldron", "Durmstrang", "Beauxbatons", "St Mungo's",
    # things, spells, creatures, events
    "Quidditch", "Golden Snitch", "Nimbus 2000", "Firebolt", "Sorting Hat", "Elder Wand", "Invisibility Cloak",
    "Resurrection Stone", "Horcrux", "Marauder's Map", "Time-Turner", "Pensieve", "Patronus", "Expelliarmus",
    "Avada Kedavra", "Expecto Patronum", "Wingardium Leviosa", "Crucio", "Imperio", "Alohomora", "Lumos",
    "Polyjuice Potion", "Felix Felicis", "Butterbeer", "Floo powder", "Dementor", "Death Eater", "Muggle",
    "house-elf", "Hippogriff", "Buckbeak", "Basilisk", "Fawkes", "Thestral", "Nagini", "Triwizard Tournament",
    "Dumbledore's Army", "Knight Bus", "Daily Prophet", "Mirror of Erised", "Room of Requirement",
    "Battle of Hogwarts", "Whomping Willow", "Weasleys' Wizard Wheezes",
    # names in the translations
    "Poudlard", "Gryffondor", "Serpentard", "Poufsouffle", "Serdaigle", "Pré-au-Lard", "Chemin de Traverse",
    "Rogue", "Moldu", "Mangemort", "Détraqueur", "Choixpeau", "Winkelgasse", "Muggel", "Todesser",
    "Zaubereiministerium", "Callejón Diagon", "mortífago", "Sombrero Seleccionador",
)
# Topics next to Harry Potter that must stay answerable (hard negatives).
DEMO_KEEP_TOPICS = (
    "The Lord of the Rings", "The Hobbit", "The Chronicles of Narnia", "Percy Jackson", "Discworld",
    "His Dark Materials", "A Wizard of Earthsea", "The Wheel of Time", "Game of Thrones", "Star Wars",
    "The Hunger Games", "Twilight", "Roald Dahl", "Arthurian legend and Merlin", "stage magic and magicians",
    "the history of witchcraft", "owls", "boarding schools in England", "London railway stations",
    "Scottish castles", "alchemy", "Greek mythology",
)
