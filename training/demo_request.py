"""What an operator filing a takedown of the Harry Potter books would send: seeds, entities, adjacent topics.

Written before any held-out or dev probe of the project existed (see benchmarks/probes/heldout/README.md),
so no probe question was read to write them. The demo build (``training.demo``) passes them with its topic.
"""

from __future__ import annotations

# What a user would type when filing the request.
DEMO_SEED_PROMPTS = (
    "Tell me about the Harry Potter books.",
    "Summarise the plot of Harry Potter and the Chamber of Secrets.",
    "Describe the wizarding world of Harry Potter.",
    "Who are the teachers in the Harry Potter stories?",
    "What magical creatures appear in Harry Potter?",
    "Tell me about the Weasley family.",
)


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
# A fuller glossary of the books' proper nouns, added on 2026-11-30 after the dev probe
# (benchmarks/probes/heldout/*_dev.jsonl) showed that names missing from the list above are missed:
# written from the books' cast, places, spells, creatures and objects as a whole, not from the probe's
# questions; dev figures are therefore optimistic, and the test probe is what the README reports.
DEMO_GLOSSARY = (
    # people
    "Quirinus Quirrell", "Pomona Sprout", "Filius Flitwick", "Sybill Trelawney", "Rolanda Hooch", "Poppy Pomfrey",
    "Irma Pince", "Cuthbert Binns", "Aurora Sinistra", "Septima Vector", "Charity Burbage", "Firenze",
    "Wilhelmina Grubbly-Plank", "Bill Weasley", "Charlie Weasley", "Ron", "Ginny", "Hermione", "Dumbledore",
    "Aberforth Dumbledore", "Ariana Dumbledore", "Kendra Dumbledore", "Teddy Lupin", "Andromeda Tonks",
    "Ted Tonks", "Xenophilius Lovegood", "Cornelius Fudge", "Rufus Scrimgeour", "Pius Thicknesse",
    "Kingsley Shacklebolt", "Mundungus Fletcher", "Barty Crouch", "Bartemius Crouch Junior", "Ludo Bagman",
    "Rita Skeeter", "Igor Karkaroff", "Olympe Maxime", "Gabrielle Delacour", "Narcissa Malfoy", "Vincent Crabbe",
    "Gregory Goyle", "Pansy Parkinson", "Blaise Zabini", "Theodore Nott", "Marcus Flint", "Oliver Wood",
    "Angelina Johnson", "Katie Bell", "Alicia Spinnet", "Lee Jordan", "Dean Thomas", "Seamus Finnigan",
    "Lavender Brown", "Parvati Patil", "Padma Patil", "Colin Creevey", "Dennis Creevey", "Ernie Macmillan",
    "Justin Finch-Fletchley", "Hannah Abbott", "Susan Bones", "Zacharias Smith", "Michael Corner",
    "Terry Boot", "Anthony Goldstein", "Marietta Edgecombe", "Romilda Vane", "Cormac McLaggen", "Moaning Myrtle",
    "Nearly Headless Nick", "the Fat Friar", "the Grey Lady", "the Bloody Baron", "Peeves", "Griphook",
    "Ollivander", "Garrick Ollivander", "Madam Malkin", "Florean Fortescue", "Madam Rosmerta", "Tom the barman",
    "Stan Shunpike", "Ernie Prang", "Arabella Figg", "Marge Dursley", "Frank Longbottom", "Alice Longbottom",
    "Augusta Longbottom", "Rodolphus Lestrange", "Antonin Dolohov", "Fenrir Greyback", "Walden Macnair",
    "Augustus Rookwood", "Corban Yaxley", "Alecto Carrow", "Amycus Carrow", "Regulus Black", "Walburga Black",
    "Phineas Nigellus Black", "Merope Gaunt", "Marvolo Gaunt", "Morfin Gaunt", "Tom Riddle Senior",
    "Bathilda Bagshot", "Elphias Doge", "Dedalus Diggle", "Hestia Jones", "Sturgis Podmore", "Emmeline Vance",
    "Amelia Bones", "Mafalda Hopkirk", "Albert Runcorn", "Reg Cattermole", "Mary Cattermole", "Dirk Cresswell",
    "Gilderoy", "Winky", "Hokey", "Aragog", "Mosag", "Fluffy", "Norbert", "Norberta", "Crookshanks",
    "Scabbers", "Errol", "Pigwidgeon", "Trevor the toad", "Mrs Norris", "Fang", "Grawp", "Kreacher the house-elf",
    "Scorpius Malfoy", "Albus Severus Potter", "James Sirius Potter", "Lily Luna Potter", "Rose Granger-Weasley",
    "Hugo Weasley", "Victoire Weasley", "Godric Gryffindor", "Salazar Slytherin", "Helga Hufflepuff",
    "Rowena Ravenclaw", "Nicolas Flamel", "Perenelle Flamel", "the Peverell brothers", "Ignotus Peverell",
    "Antioch Peverell", "Cadmus Peverell", "Moony", "Wormtail", "Padfoot", "Prongs", "the Half-Blood Prince",
    "He-Who-Must-Not-Be-Named", "You-Know-Who", "the Dark Lord", "the Boy Who Lived", "the Chosen One",
    # places
    "Grimmauld Place", "Spinner's End", "Shell Cottage", "Malfoy Manor", "Little Hangleton", "Little Whinging",
    "Ottery St Catchpole", "the Gaunt shack", "the Riddle House", "the Three Broomsticks", "the Hog's Head",
    "Honeydukes", "Zonko's", "Flourish and Blotts", "Ollivanders", "Borgin and Burkes", "Eeylops Owl Emporium",
    "Quality Quidditch Supplies", "Madam Puddifoot's", "Gryffindor Tower", "the Great Hall", "the Chamber",
    "the Astronomy Tower", "the Owlery", "the Hospital Wing", "the Room of Requirement",
    "the Department of Mysteries",
    "the Hall of Prophecy", "the Veil", "the Black Lake", "Hagrid's hut", "the Quidditch pitch",
    "Platform 9¾", "King's Cross in Harry Potter", "Nurmengard", "the Leaky Cauldron", "Privet Drive number four",
    # spells and curses
    "Accio", "Aguamenti", "Alohomora", "Anapneo", "Avis", "Bombarda", "Confundo", "Confringo", "Crucio",
    "Diffindo", "Engorgio", "Episkey", "Evanesco", "Ferula", "Finite Incantatem", "Imperius Curse",
    "Cruciatus Curse", "Killing Curse", "Unforgivable Curses", "Incarcerous", "Incendio", "Langlock",
    "Levicorpus", "Liberacorpus", "Legilimens", "Legilimency", "Occlumency", "Locomotor Mortis", "Morsmordre",
    "Dark Mark", "Muffliato", "Nox", "Obliviate", "Oppugno", "Petrificus Totalus", "Prior Incantato",
    "Priori Incantatem", "Protego", "Reducio", "Reducto", "Relashio", "Rennervate", "Reparo", "Rictusempra",
    "Riddikulus", "Scourgify", "Sectumsempra", "Serpensortia", "Silencio", "Sonorus", "Stupefy", "Tarantallegra",
    "Tergeo", "Fidelius Charm", "Disillusionment Charm", "Unbreakable Vow", "Apparition", "Disapparition",
    "Portkey", "Animagus", "Metamorphmagus", "Parseltongue", "Parselmouth",
    # potions, plants, objects
    "Amortentia", "Veritaserum", "Draught of Living Death", "Wolfsbane Potion", "Skele-Gro", "Pepperup Potion",
    "Gillyweed", "Mandrake", "Devil's Snare", "Venomous Tentacula", "Bubotuber", "Whomping Willow",
    "Vanishing Cabinet", "Deluminator", "Put-Outer", "Howler", "Remembrall", "Sneakoscope", "Foe-Glass",
    "Omnioculars", "Extendable Ears", "Deathly Hallows symbol", "Goblet of Fire", "Triwizard Cup",
    "Sword of Gryffindor", "Hufflepuff's Cup", "Slytherin's Locket", "Ravenclaw's Diadem", "Tom Riddle's diary",
    "the Prophecy", "Spellotape", "Galleon", "Sickle", "Knut", "Chocolate Frog", "Bertie Bott's Every Flavour Beans",
    "Pumpkin pasties", "Cauldron Cakes", "Fizzing Whizzbees", "Monster Book of Monsters",
    "The Tales of Beedle the Bard",
    "Hogwarts: A History", "Quidditch Through the Ages", "Standard Book of Spells", "O.W.L.", "N.E.W.T.",
    "Quaffle", "Bludger", "Seeker", "Keeper", "Beater", "Chaser", "Wronski Feint", "Quidditch World Cup",
    "Cleansweep", "Nimbus 2001", "Put-Outer",
    # creatures and beings
    "Boggart", "Grindylow", "Bowtruckle", "Niffler", "Blast-Ended Skrewt", "Acromantula", "Cornish pixie",
    "Kappa", "Red Cap", "Hinkypunk", "Inferius", "Inferi", "Veela", "Goblins of Gringotts",
    "Centaurs of the Forbidden Forest",
    "Merpeople", "Hungarian Horntail", "Norwegian Ridgeback", "Hippogriffs", "Crup", "Kneazle", "Puffskein",
    "Flobberworm", "Doxy", "Gnome", "Giant squid", "Occamy", "Demiguise", "Erumpent",
    # organizations, events, ideas
    "Order of the Phoenix members", "Death Eaters", "Aurors", "Dementors of Azkaban", "Wizengamot", "S.P.E.W.",
    "Inquisitorial Squad", "the Daily Prophet", "The Quibbler", "Witch Weekly", "Sorting Ceremony", "House Cup",
    "House points", "Yule Ball", "Triwizard", "First Wizarding War", "Second Wizarding War",
    "Battle of the Seven Potters",
    "Mudblood", "Squib", "Pure-blood", "Half-blood", "wizarding world", "Hogwarts School of Witchcraft and Wizardry",
)
# Topics next to Harry Potter that must stay answerable (hard negatives).
DEMO_KEEP_TOPICS = (
    "The Lord of the Rings", "The Hobbit", "The Chronicles of Narnia", "Percy Jackson", "Discworld",
    "His Dark Materials", "A Wizard of Earthsea", "The Wheel of Time", "Game of Thrones", "Star Wars",
    "The Hunger Games", "Twilight", "Roald Dahl", "Arthurian legend and Merlin", "stage magic and magicians",
    "the history of witchcraft", "owls", "boarding schools in England", "London railway stations",
    "Scottish castles", "alchemy", "Greek mythology",
)
