"""Phrase banks of the ``generate_scene`` executable: the sentences and clauses scenes are made of.

Templates are past tense and avoid gendered pronouns, so "I" and any name fit ``{subj}``.
Details are lower-case clauses that padding joins to openers or to each other.
"""

from __future__ import annotations

from executors.text import phrase_bank

TIME_OPENINGS = phrase_bank("""
dawn: Grey light crept over {loc}, and nothing moved. | Dawn came slowly to {loc}, pale at the edges.
morning: Morning light lay across {loc} in long, clean bars. | By mid-morning {loc} was full of small sounds.
noon: At noon the sun stood straight above {loc}. | Noon pressed down on {loc}, flat and bright.
afternoon: The afternoon stretched long and slow over {loc}. | Late light turned the dust at {loc} to gold.
dusk: Dusk gathered over {loc}, and the colours drained out of everything. | At dusk {loc} went soft and blue.
evening: Evening settled over {loc} like a held breath. | The lamps came on one by one across {loc}.
night: Night had swallowed {loc} whole. | It was full dark at {loc}, the kind of dark that hums.
midnight: Midnight found {loc} silent, every window black. | At midnight {loc} belonged to someone else.
""")
TIME_DETAILS = phrase_bank("""
dawn: the first birds tested their voices | dew beaded on every cold surface | the sky paled from ink to pearl
morning: a kettle began to sing | the air still held the cool of the night | footsteps came and went
noon: the heat shimmered above the ground | even the insects had gone quiet | every edge looked sharp
afternoon: the light thickened and turned amber | a fly droned against the glass | time slowed to a crawl
dusk: the last light bled out of the sky | bats flickered low over the rooftops | the shadows grew long
evening: windows glowed warm against the dark | the smell of woodsmoke drifted past | the noise faded
night: a dog barked twice and fell silent | the stars were hard and very far away | the cold crept in
midnight: a distant clock struck twelve | the silence had a weight to it | the moon slid behind a ragged cloud
""")
WEATHER_LINES = phrase_bank("""
clear: The sky was clear and wide, without a single cloud. | The air was still and clear.
rain: Rain fell steadily, drumming on every surface. | A thin rain had been falling for hours.
storm: A storm was breaking overhead, thunder rolling in long waves. | Lightning split the sky.
fog: Fog had rolled in, soft and thick, swallowing the far edges of things. | A heavy fog muffled every sound.
snow: Snow was falling, slow and silent. | Fresh snow lay over everything, blue in the shadows.
wind: The wind pulled at everything that was not tied down. | A restless wind moaned through every gap.
""")
WEATHER_DETAILS = phrase_bank("""
clear: the air tasted clean | sound carried a long way | the light was sharp and honest
rain: water ran in thin streams along the gutters | the smell of wet stone rose up | raindrops ticked on glass
storm: thunder rattled the loose panes | the gutters overflowed with a roar | the lights flickered
fog: shapes loomed and vanished in the grey | every lamp wore a pale halo | the damp clung to skin and cloth
snow: every footstep creaked in the snow | the flakes caught the light as they fell | the cold bit at fingers
wind: a loose shutter banged | dry leaves skittered across the ground | the wind whistled under the door
""")
TONE_ATMOSPHERE = phrase_bank("""
hopeful: There was a lightness in the air, as if something good were coming. | The place felt welcoming.
tense: The air felt stretched thin, like a wire about to snap. | Every small sound seemed too loud.
melancholy: Everything looked the way things do when you see them for the last time.
    | The quiet had the ache of old, unfinished things.
whimsical: It was the sort of place where teacups might gossip if nobody was listening.
    | Even the shadows seemed to be in on some private joke.
ominous: Something was wrong here, though nothing showed it yet. | The stillness felt like waiting.
""")
TONE_DETAILS = phrase_bank("""
hopeful: a patch of light widened across the floor | a bird sang, bright and unafraid | the air smelled new
tense: a floorboard creaked and went still | a door clicked shut | nobody seemed to breathe
melancholy: an old photograph curled at the corners | the furniture stood like patient ghosts
    | a tune played faintly and then stopped
whimsical: a cat watched from the windowsill with great interest | a teaspoon rattled in its saucer
    | a hat on a peg looked ready to leave on its own
ominous: something scraped once and stopped | the shadows in the corners seemed deeper than before
    | a smell of iron hung in the air
""")
MOOD_ACTIONS = phrase_bank("""
calm: drew a slow breath and let it go | waited without hurry | took everything in | moved with unhurried care
anxious: glanced toward the door again | twisted a loose thread around one finger
    | kept shifting from foot to foot | checked the time, then checked it again
angry: slammed a palm flat against the nearest surface | paced, jaw tight | bit back the first words that came
    | stared hard at nothing at all
joyful: laughed out loud before thinking better of it | could not stop smiling | moved with a sudden lightness
    | hummed a few bars of an old song
sad: looked away, eyes wet | sat down heavily and said nothing | traced the edge of the table with one finger
    | let the silence stretch
curious: leaned closer to get a better look | turned the thing over in both hands | listened, head tilted
    | asked question after question in a low voice
determined: squared both shoulders | stepped forward without hesitating | held on | decided in a single breath
fearful: flinched at the smallest sound | backed toward the wall | held very still | went pale and very quiet
""")
MOOD_LINES = phrase_bank("""
calm: There is no need to rush | Let us think this through
anxious: Did you hear that? | We should not be here
angry: Enough! | You knew, and you said nothing
joyful: I cannot believe it worked! | Now this is more like it
sad: It was never going to last | I wish it had been different
curious: What do you suppose this is? | Wait, look at this
determined: We finish this now | I am not turning back
fearful: Please, keep your voice down | Something is out there
""")
MOOD_VERBS = {
    "calm": ("said evenly", "said quietly"),
    "anxious": ("whispered", "muttered"),
    "angry": ("snapped", "said sharply"),
    "joyful": ("said, grinning", "laughed"),
    "sad": ("said softly", "murmured"),
    "curious": ("said", "murmured"),
    "determined": ("said firmly", "said"),
    "fearful": ("breathed", "whispered"),
}
TONE_CLOSINGS = phrase_bank("""
hopeful: Outside, the light was changing, and for the first time in a long while it felt like a beginning.
    | Whatever came next, {loc} would not feel quite so lonely again.
tense: Nobody moved, and the silence stretched until it had to break. | The moment held, taut and unfinished.
melancholy: In the end, {loc} kept its quiet, the way it always had.
    | The light faded, and what had been said could not be unsaid.
whimsical: Somewhere, quite possibly, a teacup laughed. | And {loc}, having seen stranger things, carried on.
ominous: Far off, something answered, and then the silence came back heavier than before.
    | Nobody noticed the shape that lingered at the edge of {loc}.
""")
TONE_TITLES = phrase_bank("""
hopeful: First Light | A Door Left Open | What Stays Bright
tense: The Held Breath | Knife's Edge | Before It Breaks
melancholy: What the Quiet Keeps | Empty Chairs | The Last of It
whimsical: A Peculiar Affair | Teacups and Trouble | The Wandering Hat
ominous: Something Waiting | The Quiet Before | No Lights Left
""")
GENERIC_DETAILS = (
    "a faint draught stirred the air",
    "a distant engine rose and faded",
    "water dripped in slow, even beats",
    "dust turned slowly in a thin beam of light",
)
OPENERS = ("", "Somewhere nearby, ", "Not far off, ", "Now and then, ", "In the quiet, ", "All the while, ")
REACTIONS = (
    "{other} watched {obj} without a word.",
    "{other} shot {obj} a quick look.",
    "{other} did not answer at once.",
    "{other} moved a little closer to {obj}.",
)
TRAIT_LINES = ("{subj} had always been {trait}, and it showed now.", "The {trait} side of {obj} won out.")
