"""Hand-written templates and vocabulary for examples/make_data.py (a `{slot}` draws from a list)."""

WHEN = ["last week", "yesterday", "a month ago", "over the weekend", "in March", "two days ago", "before my trip"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# ---- sentiment -------------------------------------------------------------------------------------

SENTIMENT_WORDS = {
    "pos": ["excellent", "fantastic", "great", "superb", "impressive", "wonderful", "reliable", "delightful",
            "solid", "outstanding", "lovely", "brilliant"],
    "neg": ["terrible", "awful", "disappointing", "poor", "useless", "frustrating", "mediocre", "dreadful",
            "flimsy", "annoying", "overpriced", "sloppy"],
    "posv": ["love", "really enjoyed", "adore", "am thrilled with", "am very happy with", "keep coming back to"],
    "negv": ["hate", "regret choosing", "am fed up with", "am really unhappy with", "can't stand", "gave up on"],
    "intens": ["really", "very", "truly", "remarkably", "incredibly", "pretty"],
    "when": WHEN,
    "day": DAYS,
}

DOMAINS = {
    "product": {
        "item": ["this blender", "the new phone", "these headphones", "the vacuum cleaner", "this laptop",
                 "the coffee maker", "this backpack", "the kettle", "this smartwatch"],
        "aspect": ["the battery life", "the build quality", "the sound", "the price", "the design", "the screen",
                   "the setup", "the customer support", "the charging cable"],
        "fact": ["It arrived on {day}.", "I ordered it {when}.", "It comes in black and silver.",
                 "The box contained a charger and a manual.", "I use it mostly at the office.",
                 "It replaced the one I bought in 2019.", "It weighs a little under a kilo."],
    },
    "movie": {
        "item": ["this movie", "the film", "the sequel", "this documentary", "the new thriller",
                 "the animated feature", "the remake"],
        "aspect": ["the acting", "the plot", "the soundtrack", "the ending", "the dialogue", "the pacing",
                   "the special effects", "the cinematography", "the lead performance"],
        "fact": ["I watched it {when}.", "It runs a little over two hours.", "I saw it at the cinema with my brother.",
                 "It is based on a novel from the nineties.", "It was filmed in Morocco and Spain.",
                 "I streamed it on {day} evening."],
    },
    "restaurant": {
        "item": ["this restaurant", "the new bistro", "the pizza place on the corner", "this cafe", "the sushi bar",
                 "the diner near the station", "the noodle shop"],
        "aspect": ["the food", "the service", "the pasta", "the dessert", "the coffee", "the atmosphere",
                   "the staff", "the wine list", "the portion size"],
        "fact": ["We went there {when}.", "We had a table for four.", "They open at eleven on weekdays.",
                 "I ordered the soup and a salad.", "It is next to the train station.",
                 "Reservations are taken by phone.", "We ate there on {day}."],
    },
    "hotel": {
        "item": ["this hotel", "the resort", "the guesthouse", "the hostel", "our room", "the apartment we rented"],
        "aspect": ["the room", "the breakfast", "the location", "the front desk", "the pool", "the wifi",
                   "the bed", "the view", "the cleaning"],
        "fact": ["We stayed three nights {when}.", "Check-in is at three in the afternoon.",
                 "The hotel has about forty rooms.", "We booked it through a travel site.", "Parking costs extra.",
                 "We arrived on {day} evening."],
    },
    "app": {
        "item": ["this app", "the update", "the new version", "this game", "the website", "the banking app"],
        "aspect": ["the interface", "the notifications", "the login process", "the search feature",
                   "the loading time", "the offline mode", "the dark theme"],
        "fact": ["I installed it {when}.", "It needs an account to sync.", "The update was about 80 MB.",
                 "It is available on phones and tablets.", "I use it on my tablet.",
                 "The update came out on {day}."],
    },
    "book": {
        "item": ["this book", "the novel", "the sequel", "this cookbook", "the biography",
                 "the short story collection"],
        "aspect": ["the writing", "the characters", "the ending", "the first chapter", "the translation",
                   "the pacing", "the illustrations"],
        "fact": ["I read it {when}.", "It has about three hundred pages.", "I borrowed it from the library.",
                 "It is the second book in the series.", "I listened to the audiobook version.",
                 "I finished it on {day}."],
    },
}

POLAR_TEMPLATES = {
    "positive": [
        "{item} is {pos}.", "{aspect} was {pos}.", "I {posv} {item}.", "{aspect} was {pos} and {aspect2} was {pos2}.",
        "Absolutely {pos}!", "{item} exceeded my expectations.", "I would happily recommend {item} to anyone.",
        "Five stars, {aspect} is {pos}.", "{aspect} is {intens} {pos}.", "Worth every penny, {aspect} is {pos}.",
        "{item} made my week.", "{item} turned out to be {intens} {pos}.",
    ],
    "negative": [
        "{item} is {neg}.", "{aspect} was {neg}.", "I {negv} {item}.", "{aspect} was {neg} and {aspect2} was {neg2}.",
        "Completely {neg}.", "{item} fell far short of my expectations.", "I would not recommend {item} to anyone.",
        "One star, {aspect} is {neg}.", "{aspect} is {intens} {neg}.", "Save your money and skip {item}.",
        "{item} ruined my week.", "{item} turned out to be {intens} {neg}.",
    ],
}

NEGATED_TEMPLATES = {  # negation of the opposite pole
    "positive": ["{aspect} was not {neg} at all.", "I have nothing bad to say about {item}.",
                 "I can't complain about {aspect}.", "There was nothing {neg} about {aspect}.",
                 "{aspect} never disappoints.", "I was worried it would be {neg}, but it isn't."],
    "negative": ["{aspect} was not {pos} at all.", "{item} is not {pos}, despite the reviews.",
                 "I can't say I {posv} {item}.", "Nothing about {item} was {pos}.", "{aspect} was never {pos}.",
                 "I wouldn't call {aspect} {pos}.", "I hoped it would be {pos}, but it isn't."],
}

BUT_TEMPLATES = [  # {A} and {B} become the two poles; the clause after "but" / "however" gives the label
    "{aspect} was {A}, but {aspect2} was {B}.", "At first I thought {item} was {A}, but after a week it feels {B}.",
    "{aspect} is {A}; however, {aspect2} is {B}.", "The reviews said {item} was {A}, but I found it {B}.",
    "{aspect} could be called {A}, but overall {item} is {B}.",
]

NEUTRAL_TEMPLATES = [
    "{fact}", "{fact} {fact2}", "{aspect} is about what I expected.", "{item} is okay, nothing special.",
    "{aspect} is neither great nor terrible.", "{item} is fine, I suppose.", "{aspect} was acceptable.",
    "Nothing stood out about {item}, good or bad.", "{item} does the job, no more and no less.",
    "I have no strong feelings about {item}.", "{aspect} is average.", "{fact} {aspect} is about average.",
    "Not sure yet what I think of {item}.", "{aspect} is neither {pos} nor {neg}.",
]

OPENERS = ["Honestly,", "Well,", "To be honest,", "In short,", "Update:", "Overall,", "So,", "My verdict:"]
CLOSERS = ["{fact}", "That's all.", "Just my opinion.", "Make of that what you will."]

# ---- topic -----------------------------------------------------------------------------------------

TOPIC_WORDS = {
    "day": DAYS,
    "country": ["France", "Brazil", "Japan", "Kenya", "Canada", "India", "Germany", "Mexico", "Egypt", "Australia",
                "Norway", "Indonesia"],
    "city": ["Paris", "Nairobi", "Tokyo", "São Paulo", "Berlin", "Toronto", "Mumbai", "Cairo", "Sydney", "Oslo",
             "Geneva", "Madrid"],
    "leader": ["The president", "The prime minister", "The foreign minister", "The king", "The chancellor",
               "A senior diplomat"],
    "issue": ["border security", "migration", "trade tariffs", "fishing rights", "climate policy", "water sharing",
              "refugee aid", "nuclear inspections"],
    "disaster": ["severe flooding", "a powerful earthquake", "a deadly cyclone", "wildfires near the capital",
                 "a landslide"],
    "team": ["Real Madrid", "the Chicago Bulls", "Manchester United", "the Yankees", "Bayern Munich", "the Lakers",
             "Ajax", "the Boston Red Sox", "Juventus", "the Toronto Maple Leafs"],
    "athlete": ["Serena Williams", "Lionel Messi", "Usain Bolt", "Naomi Osaka", "Eliud Kipchoge", "Simone Biles",
                "Rafael Nadal", "Tomas Lindqvist", "Amara Okafor"],
    "event": ["World Cup", "marathon", "Grand Prix", "Open championship", "Olympic trials", "national championship"],
    "score": ["2-1", "3-0", "4-2", "1-0", "3-2"],
    "draw": ["1-1", "0-0", "2-2"],
    "race": ["100 metres", "marathon", "400 metres hurdles", "200 metres freestyle"],
    "sport": ["tennis", "football", "cycling", "golf", "basketball"],
    "company": ["Apple", "Siemens", "Toyota", "Nestle", "Samsung", "a regional airline", "Unilever", "Shell",
                "Nordwind Energy", "Brightwater Foods"],
    "money": ["$2.4 billion", "$350 million", "€1.1 billion", "$75 million", "£600 million"],
    "pct": ["3", "7", "12", "1.5", "20"],
    "bizevent": ["strong holiday sales", "an upbeat earnings report", "news of a merger", "a surge in orders"],
    "badbiz": ["a profit warning", "a product recall", "weak quarterly sales", "an accounting probe"],
    "number": ["1,200", "500", "3,000", "250", "8,000"],
    "year": ["2008", "2014", "2019", "2022"],
    "university": ["MIT", "Oxford University", "the University of Tokyo", "ETH Zurich", "Stanford",
                   "the Max Planck Institute"],
    "discovery": ["a new species of frog", "a way to recycle plastic with enzymes",
                  "water ice beneath the surface of Mars", "an ancient bacterial enzyme", "a new class of antibiotics"],
    "astro": ["Jupiter's moon Europa", "a distant galaxy", "the rings of Saturn", "a nearby exoplanet",
              "the far side of the Moon"],
    "organism": ["the axolotl", "a deep-sea squid", "the wheat plant", "the honeybee"],
    "robotdo": ["climb walls", "fold laundry", "swim like a fish", "sort recycling"],
    "physics": ["the mass of the neutrino", "gravitational waves", "the speed of sound in metals",
                "the proton's radius"],
    "finding": ["octopuses may dream", "Arctic ice is melting faster than predicted", "crows can count",
                "early humans used fire earlier than thought"],
    "fossil": ["a previously unknown dinosaur", "an early whale ancestor", "a giant flightless bird"],
    "climate": ["sea levels could rise faster this century", "coral reefs face mass bleaching",
                "glaciers in the Alps are shrinking rapidly"],
    "actor": ["Meryl Streep", "Tom Hanks", "Zendaya", "Denzel Washington", "Cate Blanchett", "Idris Elba",
              "Priya Sharma", "Lucas Moreau"],
    "title": ["The Silent Harbour", "Midnight Express Line", "Echoes of Winter", "The Last Orchard",
              "Paper Kingdoms", "Blue Horizon"],
    "band": ["Coldplay", "the Rolling Stones", "Arctic Monkeys", "The Velvet Lanterns", "BTS", "Northern Static"],
    "habit": ["smoking", "sitting for long hours", "drinking sugary sodas", "poor sleep", "heavy drinking"],
    "condition": ["heart disease", "type 2 diabetes", "depression", "asthma", "high blood pressure", "dementia"],
    "advice": ["a daily thirty-minute walk", "eating more fibre", "cutting back on salt", "regular check-ups"],
    "disease": ["measles", "influenza", "dengue fever", "tuberculosis", "COVID-19"],
    "patients": ["children under five", "older adults", "pregnant women", "cancer patients"],
    "food": ["leafy greens", "a handful of nuts", "oily fish", "berries"],
}

TOPIC_TEMPLATES = {
    "world": [
        "{leader} of {country} arrived in {city} for talks on {issue}.",
        "Thousands of people marched through {city} to protest against new rules on {issue}.",
        "The government of {country} declared a state of emergency after {disaster}.",
        "Foreign ministers from {country} and {country2} signed an agreement on {issue}.",
        "Voters in {country} go to the polls on {day} in a closely watched election.",
        "The United Nations called for a ceasefire along the border between {country} and {country2}.",
        "Rescue teams in {country} are searching for survivors after {disaster}.",
        "{country} recalled its ambassador from {country2} in a dispute over {issue}.",
        "Officials in {city} said the summit on {issue} would continue until {day}.",
        "Parliament in {country} passed a law on {issue} late on {day}.",
    ],
    "sports": [
        "{team} beat {team2} {score} on {day} night.",
        "{athlete} won the {event} after a dramatic final round.",
        "The coach of {team} said {athlete} will miss the next match with a knee injury.",
        "{athlete} set a new national record in the {race}.",
        "Fans packed the stadium in {city} as {team} clinched the title.",
        "{team} and {team2} drew {draw} in a tense derby.",
        "{athlete} announced a retirement from professional {sport}.",
        "The {event} will be held in {city} next summer.",
        "{team} fired their manager after a run of five straight defeats.",
        "{athlete} trained in {city} for six weeks before the {event}.",
    ],
    "business": [
        "Shares of {company} rose {pct} percent after {bizevent}.",
        "Shares of {company} fell {pct} percent after {badbiz}.",
        "{company} agreed to buy {company2} for {money}.",
        "The central bank of {country} raised interest rates by a quarter point.",
        "{company} reported quarterly profit of {money}, beating forecasts.",
        "{company} will cut {number} jobs as demand slows.",
        "Oil prices climbed to their highest level since {year}.",
        "{company} plans to open a new factory in {city}, creating {number} jobs.",
        "The chief executive of {company} stepped down on {day}.",
        "{team} agreed a sponsorship deal with {company} worth {money}.",
    ],
    "science": [
        "Researchers at {university} have discovered {discovery}.",
        "A new telescope captured detailed images of {astro}.",
        "Scientists sequenced the genome of {organism} for the first time.",
        "Engineers at {university} built a robot that can {robotdo}.",
        "A spacecraft launched on {day} is headed for {astro}.",
        "Physicists at {university} reported a new measurement of {physics}.",
        "A study published on {day} suggests that {finding}.",
        "Fossils found in {country} belong to {fossil}.",
        "Climate scientists warn that {climate}.",
        "A team at {university} unveiled a battery that charges in under five minutes.",
    ],
    "entertainment": [
        "{actor} will star in {title}, due in cinemas next spring.",
        "The band {band} announced a world tour starting in {city}.",
        "{title} topped the box office for a third straight weekend.",
        "{actor} won the award for best performance at the film festival in {city}.",
        "The streaming series {title} was renewed for a second season.",
        "The new album by {band} went straight to number one.",
        "{actor} and {actor2} are set to host the awards ceremony on {day}.",
        "A documentary about {band} premieres at the festival in {city}.",
        "The final episode of {title} drew a record audience.",
        "Tickets for the {band} concert in {city} sold out in minutes.",
    ],
    "health": [
        "A new study links {habit} to a higher risk of {condition}.",
        "Doctors recommend {advice} to lower the risk of {condition}.",
        "Health officials in {country} reported a rise in {disease} cases.",
        "The hospital in {city} opened a new ward for {patients}.",
        "A clinical trial found that a new drug eased the symptoms of {condition}.",
        "The vaccine against {disease} will be offered to {patients} this autumn.",
        "Researchers at {university} say {advice} can improve sleep and mood.",
        "Nurses in {city} warned of long waiting times in emergency rooms.",
        "Eating {food} every day may help protect against {condition}.",
        "The health ministry of {country} launched a campaign against {habit}.",
    ],
}

# Short stories told in frames shared by every topic, so the frame's words say nothing about the label.
TOPIC_FRAMES = ["Reports on {day} said {story}.", "Officials in {city} confirmed that {story}.",
                "It emerged on {day} that {story}.", "Sources in {city} say {story}.",
                "Nobody expected it, but {story}."]
TOPIC_STORIES = {
    "world": ["the two governments resumed peace talks", "the border crossing reopened",
              "the opposition leader was released from prison", "the ceasefire is holding",
              "the embassy will reopen next month"],
    "sports": ["the striker signed a new contract", "the final will be replayed", "the team's captain is injured",
               "the league suspended the referee", "the club sold its star player"],
    "business": ["the merger was approved", "the company's profits doubled", "the retailer filed for bankruptcy",
                 "the airline raised its fares", "the bank will close forty branches"],
    "science": ["the probe reached orbit", "the experiment confirmed the theory", "the new species was named",
                "the satellite sent back its first images", "the telescope will be upgraded"],
    "entertainment": ["the singer cancelled the tour", "the film will get a sequel",
                      "the show was cancelled after one season", "the actor joined the cast",
                      "the festival will move to a bigger venue"],
    "health": ["the outbreak is under control", "the clinic will stay open", "the new drug was approved",
               "flu cases are falling", "the hospital will hire more nurses"],
}

# ---- NER -------------------------------------------------------------------------------------------

ENTITIES = {  # slot -> (entity type, names); "Jordan" and "Washington" are both people and places
    "PER": ("PER", ["Angela Merkel", "John Smith", "Maria Garcia", "Wei Zhang", "Fatima Al-Sayed", "Jordan",
                    "Kenji Watanabe", "Olivia Brown", "Pierre Dubois", "Denzel Washington", "Amara Okafor",
                    "Lars Eriksson", "Ana Souza"]),
    "ORG": ("ORG", ["Google", "United Nations", "Siemens", "Reuters", "Bank of England", "Oxford University",
                    "Red Cross", "Toyota", "World Health Organization", "European Commission", "Nordwind Energy"]),
    "TEAM": ("ORG", ["Manchester United", "Bayern Munich", "Ajax", "Real Madrid", "Juventus"]),
    "LOC": ("LOC", ["Paris", "Germany", "New York", "Lake Victoria", "Tokyo", "Brazil", "Jordan", "Washington",
                    "Cape Town", "Mount Kenya", "Sydney", "Kenya", "South Korea", "Lisbon"]),
    "NAT": ("MISC", ["German", "French", "Japanese", "Brazilian", "Kenyan", "Canadian", "Korean"]),
    "LANG": ("MISC", ["English", "Spanish", "Mandarin", "Arabic", "Swahili", "Portuguese"]),
    "GAMES": ("MISC", ["Olympics", "World Cup", "Commonwealth Games", "Tour de France"]),
    "FEAST": ("MISC", ["Christmas", "Ramadan", "Diwali", "Easter"]),
    "PRIZE": ("MISC", ["Nobel Prize", "Booker Prize", "Pulitzer Prize"]),
}

NER_WORDS = {
    "day": DAYS,
    "month": ["January", "March", "June", "September", "November"],
    "year": ["1998", "2005", "2012", "2019", "2023"],
    "money": ["2 billion dollars", "300 million euros", "50 million pounds"],
    "adj": ["cold", "quiet", "busy", "wet", "long"],
}

NER_TEMPLATES = [
    "{PER} , the chief executive of {ORG} , said on {day} that the company will open an office in {LOC} .",
    "{PER} visited {LOC} last week to meet officials from {ORG} .",
    "{ORG} said it would invest {money} in {LOC} over the next five years .",
    "The {NAT} delegation arrived in {LOC} on {day} .",
    "{PER} won a gold medal at the {GAMES} in {LOC} .",
    "According to {ORG} , prices in {LOC} rose sharply in {month} .",
    "{PER} told {ORG} that she had no plans to leave {LOC} .",
    "Police in {LOC} arrested two men on {day} , a spokesman for {ORG} said .",
    "{PER} and {PER} met in {LOC} to discuss trade .",
    "The {NAT} government criticised the decision by {ORG} .",
    "{PER} speaks fluent {LANG} and {LANG} .",
    "Shares in {ORG} fell after {PER} resigned as chairman .",
    "Thousands gathered in {LOC} to celebrate {FEAST} .",
    "{PER} , who grew up in {LOC} , joined {ORG} in {year} .",
    "{ORG} opened a research centre near {LOC} .",
    "{PER} scored twice as {TEAM} beat {TEAM} 3 - 1 in {LOC} .",
    "The {GAMES} will take place in {LOC} in {year} .",
    "{PER} was born in {LOC} in {year} .",
    "{PER} , a {NAT} novelist , won the {PRIZE} .",
    "The {adj} weather lasted for most of {month} .",
    "The meeting on {day} ended without an agreement .",
    "Prices rose again in {month} after a {adj} winter .",
    "{PER} said the {LANG} edition of the book sold well in {LOC} .",
    "{TEAM} confirmed that {PER} will leave the club in {month} .",
]

# ---- paraphrase pairs (embed) ------------------------------------------------------------------------
# Each pair says the same thing twice; both sides are filled with the same slot values.

PARAPHRASES = [
    ("{company} agreed to buy {company2} for {money}.",
     "{company2} will be taken over by {company} in a {money} deal."),
    ("{team} beat {team2} {score} on {day}.", "On {day}, {team2} lost {score} to {team}."),
    ("{leader} of {country} arrived in {city} for talks on {issue}.",
     "Talks on {issue} brought the leader of {country} to {city}."),
    ("Shares of {company} fell {pct} percent after {badbiz}.",
     "{company} stock dropped {pct} percent following {badbiz}."),
    ("Researchers at {university} have discovered {discovery}.", "{discovery} was found by a team at {university}."),
    ("A new study links {habit} to a higher risk of {condition}.",
     "According to new research, {habit} makes {condition} more likely."),
    ("{actor} will star in {title}.", "{title} will feature {actor} in the lead role."),
    ("The band {band} announced a world tour starting in {city}.",
     "{band} will begin their world tour with a show in {city}."),
    ("Rescue teams in {country} are searching for survivors after {disaster}.",
     "After {disaster}, rescuers in {country} are looking for people who survived."),
    ("{athlete} set a new national record in the {race}.", "In the {race}, {athlete} broke the national record."),
    ("{company} will cut {number} jobs as demand slows.",
     "Slowing demand means {number} people will lose their jobs at {company}."),
    ("Doctors recommend {advice} to lower the risk of {condition}.",
     "To reduce the chance of {condition}, doctors advise {advice}."),
    ("A spacecraft launched on {day} is headed for {astro}.",
     "The probe that lifted off on {day} is on its way to {astro}."),
    ("Health officials in {country} reported a rise in {disease} cases.",
     "{disease} cases are increasing in {country}, officials say."),
    ("{title} topped the box office for a third straight weekend.",
     "For the third weekend running, {title} was the most watched film in cinemas."),
    ("The coach of {team} said {athlete} will miss the next match with a knee injury.",
     "A knee injury will keep {athlete} out of the next {team} game, the coach said."),
]

# ---- extraction (generate) -----------------------------------------------------------------------------

EXTRACT_PROMPTS = {  # entity type -> how the instruction names it
    "PER": ["List the people mentioned in this sentence: {text}", "Who is named in the following sentence? {text}"],
    "ORG": ["List the organisations mentioned in this sentence: {text}",
            "Which companies or organisations appear here? {text}"],
    "LOC": ["List the places mentioned in this sentence: {text}", "Which locations does this sentence name? {text}"],
}
