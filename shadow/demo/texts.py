"""Phrasebooks for the demo tickets: subjects and sentences per language and category.

Text is composed from these templates so that no two tickets read alike while each
stays consistent with its true category. Placeholders (``{order}``, ``{feature}``,
...) are filled per ticket by :func:`compose`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

CATEGORIES: Final = ("billing", "login", "bug", "feature_request", "shipping", "cancellation")
"""The labels a human support agent assigns; the outcome of a ticket is one of these."""

LANGUAGES: Final = ("en", "de", "fr")


@dataclass(frozen=True)
class Phrasebook:
    """Everything needed to write a ticket in one language."""

    subjects: dict[str, tuple[str, ...]]
    sentences: dict[str, tuple[str, ...]]
    greetings: tuple[str, ...]
    closings: tuple[str, ...]
    context: tuple[str, ...]
    vague_subjects: tuple[str, ...]
    vague_sentences: tuple[str, ...]
    currency: str


_EN = Phrasebook(
    subjects={
        "billing": (
            "Charged twice this month",
            "Question about my invoice",
            "Refund for order {order}",
            "Wrong amount on my invoice",
            "Payment failed but money was taken",
            "VAT missing on receipt",
            "Money taken twice",
            "Price went up?",
        ),
        "login": (
            "Can't log in",
            "Password reset link not working",
            "Locked out of my account",
            "2FA code never arrives",
            "Login loop after update",
            "Sign-in problem",
            "Access denied",
            "Can't get into my account",
        ),
        "bug": (
            "App crashes on startup",
            "Error 500 when saving",
            "Export is broken",
            "Bug: dashboard shows blank page",
            "Sync keeps failing",
            "Buttons unresponsive after update",
            "Something weird with reports",
            "Save button does nothing",
        ),
        "feature_request": (
            "Feature request: {feature}",
            "Suggestion for the dashboard",
            "Would love {feature}",
            "Idea: bulk editing",
            "Please add {feature}",
            "Request: more export formats",
            "Bulk editing?",
            "Missing {feature}",
        ),
        "shipping": (
            "Where is my order {order}?",
            "Package not delivered",
            "Tracking number doesn't update",
            "Wrong item in my parcel",
            "Delivery delayed",
            "Damaged package",
            "Still in transit",
            "Where is my stuff?",
        ),
        "cancellation": (
            "Cancel my subscription",

            "Please close my account",
            "How do I cancel?",
            "Stop auto-renewal",
            "End of contract",
            "Unsubscribe from {plan}",
            "Leaving",
            "We're switching tools",
        ),
    },
    sentences={
        "billing": (
            "I was charged {amount} twice for the same {plan} subscription.",
            "The invoice for last month shows {amount} but my plan costs less.",
            "Could you refund the duplicate payment to my card?",
            "My credit card was billed even though I downgraded.",
            "Please send a corrected invoice with our VAT number.",
            "The app says the payment failed but my bank statement shows the charge.",
            "The money left my account twice this week.",
            "Why did the price go up without any notice?",
        ),
        "login": (
            "Every time I try to log in I get sent back to the sign-in page.",
            "The password reset email never arrives, I checked spam.",
            "My account is locked after too many login attempts.",
            "The two-factor code is rejected even though it is fresh.",
            "I changed my password yesterday and now the new one is refused.",
            "I can't sign in on my {device} but the web version is fine.",
            "The app keeps asking for the code from my authenticator.",
            "I just see 'access denied' when I open the site.",
        ),
        "bug": (
            "The app crashes as soon as I open {feature} on my {device}.",
            "Saving a report fails with an error 500.",
            "Since the last update the dashboard is just a blank page.",
            "I think this is a bug: the numbers in the export do not match the screen.",
            "It freezes for about a minute and then shows an unknown error.",
            "Steps to reproduce: open settings, click save, the page is broken.",
            "Nothing happens when I click the save button.",
            "The totals on the weekly report look wrong since Monday.",
        ),
        "feature_request": (
            "It would be great if you could add {feature}.",
            "Our team would really like a way to edit several items at once.",
            "Is {feature} on your roadmap? We would pay extra for it.",
            "A small suggestion: let us choose the default view.",
            "Could you add support for {feature} in the next release?",
            "We miss an option to schedule reports weekly.",
            "Many of us use {feature} in other tools and miss it here.",
            "We want to be able to edit in bulk.",
        ),
        "shipping": (
            "My order {order} was shipped {days} days ago but hasn't arrived.",
            "The tracking page has shown the same status for days.",
            "The courier says the package was delivered but nothing is here.",
            "The parcel arrived damaged and one item is missing.",
            "Can you tell me when the delivery will arrive?",
            "I received the wrong size in the package; how do I send it back?",
            "It still says 'in transit' after a week.",
            "Nobody was home, where can I pick it up?",
        ),
        "cancellation": (
            "I would like to cancel my {plan} subscription at the end of this month.",
            "Please close my account and delete my data.",
            "We are moving to another tool and want to end our contract.",
            "How do I turn off the automatic renewal?",
            "Please confirm the cancellation in writing.",
            "We no longer need the service, please terminate it.",
            "We are not going to renew next year.",
            "I want a refund for the rest of the year since we are leaving.",
        ),
    },
    greetings=("Hello,", "Hi team,", "Good morning,", "Hi there,", "Dear support,"),
    closings=(
        "Thanks, {first}", "Best regards,\n{name}", "Cheers, {first}", "Kind regards, {name}"
    ),
    context=(
        "I have been a customer for {years} years.",
        "This is quite urgent for us.",
        "Thanks in advance for your help.",
        "We use the {plan} plan for a team of {seats}.",
        "I already tried on a second {device}.",
    ),
    vague_subjects=("Question", "Help please", "Issue with my account", "Urgent", "Follow-up"),
    vague_sentences=(
        "Something is wrong with my account, please call me back.",
        "I wrote to you last week and still have no answer.",
        "Can someone look into this today?",
    ),
    currency="${amount}.00",
)

_DE = Phrasebook(
    subjects={
        "billing": (
            "Doppelte Abbuchung",
            "Frage zur Rechnung",
            "Rückerstattung für Bestellung {order}",
            "Falscher Betrag auf der Rechnung",
            "Zahlung fehlgeschlagen",
            "Mehrwertsteuer fehlt",
        ),
        "login": (
            "Login funktioniert nicht",
            "Passwort zurücksetzen geht nicht",
            "Konto gesperrt",
            "2FA-Code kommt nicht an",
            "Anmeldung nicht möglich",
            "Login-Schleife nach Update",
        ),
        "bug": (
            "App stürzt beim Start ab",
            "Fehler 500 beim Speichern",
            "Export ist kaputt",
            "Bug: Dashboard bleibt leer",
            "Synchronisierung schlägt fehl",
            "Schaltflächen reagieren nicht",
            "App crasht ständig",
        ),
        "feature_request": (
            "Feature-Wunsch: {feature}",
            "Vorschlag für das Dashboard",
            "Wir hätten gern {feature}",
            "Idee: Massenbearbeitung",
            "Bitte {feature} einbauen",
            "Wunsch: mehr Exportformate",
        ),
        "shipping": (
            "Wo ist meine Bestellung {order}?",
            "Paket nicht angekommen",
            "Tracking-Nummer aktualisiert sich nicht",
            "Falscher Artikel im Paket",
            "Lieferung verspätet",
            "Beschädigtes Paket",
        ),
        "cancellation": (
            "Abo kündigen",
            "Bitte Konto schließen",
            "Wie kann ich kündigen?",
            "Automatische Verlängerung stoppen",
            "Vertragsende",
            "Abo canceln",
            "Kündigung {plan}",
        ),
    },
    sentences={
        "billing": (
            "Mir wurden {amount} doppelt für das {plan}-Abo abgebucht.",
            "Die Rechnung vom letzten Monat zeigt {amount}, das ist zu viel.",
            "Bitte erstatten Sie die doppelte Zahlung auf meine Kreditkarte.",
            "Meine Karte wurde belastet, obwohl ich heruntergestuft habe.",
            "Bitte schicken Sie eine korrigierte Rechnung mit unserer USt-IdNr.",
            "In der App steht Zahlung fehlgeschlagen, aber das Geld ist abgebucht.",
        ),
        "login": (
            "Jedes Mal, wenn ich mich anmelde, lande ich wieder auf der Login-Seite.",
            "Die E-Mail zum Zurücksetzen des Passworts kommt nie an.",
            "Mein Konto ist nach zu vielen Versuchen gesperrt.",
            "Der Bestätigungscode wird abgelehnt, obwohl er ganz neu ist.",
            "Seit gestern wird mein neues Passwort nicht akzeptiert.",
            "Auf meinem {device} kann ich mich nicht einloggen.",
        ),
        "bug": (
            "Die App stürzt ab, sobald ich {feature} auf meinem {device} öffne.",
            "Beim Speichern eines Berichts kommt ein Fehler 500.",
            "Seit dem letzten Update ist das Dashboard eine leere Seite.",
            "Ich glaube, das ist ein Bug: die Zahlen im Export stimmen nicht.",
            "Die Seite friert ein und zeigt dann einen unbekannten Fehler.",
            "Schritte: Einstellungen öffnen, Speichern klicken, nichts passiert.",
            "Die App crasht, und es erscheint nur 'Error 500'.",
            "Die Summen im Wochenbericht sind seit Montag falsch.",
        ),
        "feature_request": (
            "Es wäre toll, wenn Sie {feature} hinzufügen könnten.",
            "Unser Team möchte mehrere Einträge gleichzeitig bearbeiten.",
            "Ist {feature} geplant? Wir würden dafür auch mehr zahlen.",
            "Ein kleiner Vorschlag: die Standardansicht wählbar machen.",
            "Könnten Sie {feature} im nächsten Release anbieten?",
            "Uns fehlt die Möglichkeit, Berichte wöchentlich zu planen.",
        ),
        "shipping": (
            "Meine Bestellung {order} wurde vor {days} Tagen versandt, ist aber nicht da.",
            "Die Sendungsverfolgung zeigt seit Tagen denselben Status.",
            "Laut Zusteller wurde das Paket geliefert, aber hier ist nichts.",
            "Das Paket kam beschädigt an und ein Artikel fehlt.",
            "Können Sie mir sagen, wann die Lieferung kommt?",
            "Ich habe die falsche Größe bekommen; wie schicke ich sie zurück?",
        ),
        "cancellation": (
            "Ich möchte mein {plan}-Abo zum Monatsende kündigen.",
            "Bitte schließen Sie mein Konto und löschen Sie meine Daten.",
            "Wir wechseln zu einem anderen Tool und möchten den Vertrag beenden.",
            "Wie schalte ich die automatische Verlängerung ab?",
            "Bitte bestätigen Sie die Kündigung schriftlich.",
            "Wir brauchen den Dienst nicht mehr, bitte beenden Sie ihn.",
            "Wie kann ich mein Abo canceln?",
            "Wir verlängern nächstes Jahr nicht.",
        ),
    },
    greetings=("Hallo,", "Guten Tag,", "Sehr geehrte Damen und Herren,", "Hallo Support-Team,"),
    closings=("Danke, {first}", "Viele Grüße,\n{name}", "Mit freundlichen Grüßen\n{name}"),
    context=(
        "Ich bin seit {years} Jahren Kunde.",
        "Es ist für uns recht dringend.",
        "Vielen Dank im Voraus.",
        "Wir nutzen den {plan}-Tarif für ein Team von {seats} Personen.",
        "Ich habe es schon auf einem zweiten {device} probiert.",
    ),
    vague_subjects=("Frage", "Bitte um Hilfe", "Problem mit meinem Konto", "Dringend", "Nachfrage"),
    vague_sentences=(
        "Mit meinem Konto stimmt etwas nicht, bitte rufen Sie mich zurück.",
        "Ich habe letzte Woche geschrieben und noch keine Antwort.",
        "Kann sich das heute jemand ansehen?",
    ),
    currency="{amount},00 €",
)

_FR = Phrasebook(
    subjects={
        "billing": (
            "Double prélèvement",
            "Question sur ma facture",
            "Remboursement de la commande {order}",
            "Montant erroné sur la facture",
            "Paiement échoué",
            "TVA manquante",
            "Argent pris deux fois",
            "Le prix a augmenté ?",
        ),
        "login": (
            "Impossible de me connecter",
            "Le lien de réinitialisation du mot de passe ne marche pas",
            "Compte bloqué",
            "Code 2FA jamais reçu",
            "Boucle de connexion après la mise à jour",
            "Problème d'identification",
            "Accès refusé",
            "Je ne peux plus entrer dans mon compte",
        ),
        "bug": (
            "L'application plante au démarrage",
            "Erreur 500 à l'enregistrement",
            "L'export ne fonctionne plus",
            "Bug : tableau de bord vide",
            "La synchronisation échoue",
            "Les boutons ne répondent plus",
            "Rapports bizarres",
            "Le bouton enregistrer ne fait rien",
        ),
        "feature_request": (
            "Demande de fonctionnalité : {feature}",
            "Suggestion pour le tableau de bord",
            "Nous aimerions {feature}",
            "Idée : modification en masse",
            "Merci d'ajouter {feature}",
            "Souhait : plus de formats d'export",
            "Modification groupée ?",
            "Il manque {feature}",
        ),
        "shipping": (
            "Où est ma commande {order} ?",
            "Colis non livré",
            "Le suivi ne se met pas à jour",
            "Mauvais article dans mon colis",
            "Livraison en retard",
            "Colis endommagé",
            "Toujours en transit",
            "Où sont mes affaires ?",
        ),
        "cancellation": (
            "Résilier mon abonnement",
            "Merci de fermer mon compte",
            "Comment annuler ?",
            "Arrêter le renouvellement automatique",
            "Fin de contrat",
            "Résiliation {plan}",
            "Nous partons",
            "Changement d'outil",
        ),
    },
    sentences={
        "billing": (
            "J'ai été prélevé {amount} deux fois pour l'abonnement {plan}.",
            "La facture du mois dernier indique {amount}, c'est trop.",
            "Pouvez-vous rembourser le paiement en double sur ma carte ?",
            "Ma carte bancaire a été débitée alors que j'ai changé d'offre.",
            "Merci d'envoyer une facture corrigée avec notre numéro de TVA.",
            "L'application indique un paiement échoué mais l'argent a été débité.",
            "L'argent a quitté mon compte deux fois cette semaine.",
            "Pourquoi le prix a-t-il augmenté sans prévenir ?",
        ),
        "login": (
            "À chaque connexion, je reviens sur la page d'accueil.",
            "L'e-mail de réinitialisation du mot de passe n'arrive jamais.",
            "Mon compte est bloqué après trop de tentatives de connexion.",
            "Le code de validation est refusé alors qu'il est récent.",
            "J'ai changé mon mot de passe hier et le nouveau est refusé.",
            "Je n'arrive pas à me connecter sur mon {device}.",
            "L'application me demande sans cesse le code de mon authentificateur.",
            "Je vois seulement « accès refusé » en ouvrant le site.",
        ),
        "bug": (
            "L'application plante dès que j'ouvre {feature} sur mon {device}.",
            "L'enregistrement d'un rapport échoue avec une erreur 500.",
            "Depuis la dernière mise à jour, le tableau de bord est une page blanche.",
            "Je pense que c'est un bug : les chiffres de l'export sont faux.",
            "Tout se fige pendant une minute puis une erreur inconnue s'affiche.",
            "Étapes : ouvrir les paramètres, cliquer sur enregistrer, la page est cassée.",
            "Rien ne se passe quand je clique sur le bouton enregistrer.",
            "Les totaux du rapport hebdomadaire sont faux depuis lundi.",
        ),
        "feature_request": (
            "Ce serait super si vous pouviez ajouter {feature}.",
            "Notre équipe aimerait pouvoir modifier plusieurs éléments à la fois.",
            "{feature} est-il prévu dans votre feuille de route ?",
            "Petite suggestion : laissez-nous choisir la vue par défaut.",
            "Pourriez-vous ajouter {feature} dans la prochaine version ?",
            "Il nous manque une option pour planifier les rapports.",
            "Beaucoup d'entre nous utilisent {feature} ailleurs et le regrettent ici.",
            "Nous voulons pouvoir modifier en masse.",
        ),
        "shipping": (
            "Ma commande {order} a été expédiée il y a {days} jours mais n'est pas arrivée.",
            "La page de suivi affiche le même statut depuis des jours.",
            "Le transporteur dit que le colis a été livré mais je n'ai rien reçu.",
            "Le colis est arrivé abîmé et il manque un article.",
            "Pouvez-vous me dire quand la livraison arrivera ?",
            "J'ai reçu la mauvaise taille dans le colis, comment la renvoyer ?",
            "Il est toujours « en transit » après une semaine.",
            "Personne n'était là, où puis-je le récupérer ?",
        ),
        "cancellation": (
            "Je souhaite résilier mon abonnement {plan} à la fin du mois.",
            "Merci de fermer mon compte et de supprimer mes données.",
            "Nous passons à un autre outil et voulons mettre fin au contrat.",
            "Comment désactiver le renouvellement automatique ?",
            "Merci de confirmer la résiliation par écrit.",
            "Nous n'avons plus besoin du service, merci d'y mettre fin.",
            "Nous ne renouvellerons pas l'an prochain.",
            "Je veux un remboursement pour le reste de l'année puisque nous partons.",
        ),
    },
    greetings=("Bonjour,", "Bonjour l'équipe,", "Madame, Monsieur,"),
    closings=("Merci, {first}", "Cordialement,\n{name}", "Bien à vous,\n{name}"),
    context=(
        "Je suis client depuis {years} ans.",
        "C'est assez urgent pour nous.",
        "Merci d'avance pour votre aide.",
        "Nous utilisons l'offre {plan} pour une équipe de {seats} personnes.",
        "J'ai déjà essayé sur un autre {device}.",
    ),
    vague_subjects=("Question", "Besoin d'aide", "Problème avec mon compte", "Urgent", "Relance"),
    vague_sentences=(
        "Quelque chose ne va pas avec mon compte, merci de me rappeler.",
        "Je vous ai écrit la semaine dernière et je n'ai pas de réponse.",
        "Quelqu'un peut-il regarder aujourd'hui ?",
    ),
    currency="{amount},00 €",
)

PHRASEBOOKS: Final[dict[str, Phrasebook]] = {"en": _EN, "de": _DE, "fr": _FR}

_FEATURES = ("dark mode", "CSV export", "calendar sync", "a Slack integration", "custom fields")
_DEVICES = ("iPhone", "Android phone", "Windows laptop", "Mac", "iPad")
_PLANS = ("Starter", "Pro", "Team", "Enterprise")


def compose(
    rng: random.Random,
    *,
    language: str,
    category: str,
    channel: str,
    customer_name: str,
    secondary: str | None = None,
    vague: bool = False,
) -> tuple[str, str]:
    """Write a ticket's ``(subject, body)`` for its true ``category``.

    ``secondary`` mixes in one sentence of another category (an ambiguous ticket);
    ``vague`` writes a subject with no category keywords and at most one sentence
    that has them. Chat tickets skip the letter-style greeting and closing.
    """
    book = PHRASEBOOKS[language]
    first = customer_name.split()[0]
    values = {
        "order": f"#{rng.randint(100000, 999999)}",
        "amount": book.currency.format(amount=rng.choice((9, 19, 29, 49, 99, 249))),
        "plan": rng.choice(_PLANS),
        "feature": rng.choice(_FEATURES),
        "device": rng.choice(_DEVICES),
        "days": str(rng.randint(3, 12)),
        "years": str(rng.randint(2, 9)),
        "seats": str(rng.randint(3, 80)),
        "first": first,
        "name": customer_name,
    }
    if vague:
        subject = rng.choice(book.vague_subjects)
        lines = [rng.choice(book.vague_sentences)]
        if rng.random() < 0.5:
            lines.append(rng.choice(book.sentences[category]))
    else:
        subject = rng.choice(book.subjects[category])
        lines = rng.sample(book.sentences[category], rng.choice((1, 2, 2, 3)))
    if secondary is not None:
        lines.insert(rng.randint(0, len(lines)), rng.choice(book.sentences[secondary]))
    if rng.random() < 0.4:
        lines.append(rng.choice(book.context))
    text = " ".join(lines)
    if channel != "chat":
        text = f"{rng.choice(book.greetings)}\n\n{text}\n\n{rng.choice(book.closings)}"
    return subject.format_map(values), text.format_map(values)
