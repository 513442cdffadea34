"""User-facing messages in French (default) and English, and locale choice.

Two locales do not need gettext catalogues: one dict per locale keeps each
message and its translation side by side in review.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

LOCALES = ("fr", "en")
DEFAULT_LOCALE = "fr"

MESSAGES: dict[str, dict[str, str]] = {
    "fr": {
        "accepted": "Merci ! Vérifiez votre boîte de réception : un e-mail de confirmation vient de vous être envoyé.",
        "suggestion": "Vouliez-vous dire {suggestion} ?",
        "invalid.empty": "Veuillez saisir votre adresse e-mail.",
        "invalid.type": "L’adresse e-mail doit être du texte.",
        "invalid.too_long": "Cette adresse e-mail est trop longue.",
        "invalid.control": "L’adresse e-mail contient des caractères interdits (retour à la ligne ou caractère de contrôle).",
        "invalid.no_at": "Il manque le caractère « @ » dans l’adresse e-mail.",
        "invalid.many_at": "L’adresse e-mail ne doit contenir qu’un seul « @ ».",
        "invalid.quoted": "Les adresses entre guillemets ne sont pas acceptées.",
        "invalid.ip_literal": "Une adresse IP à la place du nom de domaine n’est pas acceptée.",
        "invalid.local": "La partie avant le « @ » n’est pas valide.",
        "invalid.domain": "Le nom de domaine après le « @ » n’est pas valide.",
        "invalid.undeliverable": "Ce nom de domaine ne reçoit pas d’e-mails.",
        "invalid.other": "Cette adresse e-mail n’est pas valide.",
        "bad_request": "Requête invalide : {detail}",
        "too_large": "Requête trop volumineuse.",
        "unsupported_type": "Format non pris en charge : envoyez du JSON ou un formulaire.",
        "page.title": "{site}",
        "page.subscribe.heading": "Rejoignez gratuitement la communauté",
        "page.subscribe.lead": "et suivez chaque semaine l’actualité",
        "page.subscribe.label": "Votre adresse e-mail",
        "page.subscribe.button": "S’inscrire",
        "page.thanks.title": "Plus qu’une étape",
        "page.thanks.body": "Nous venons de vous envoyer un e-mail. Cliquez sur le lien qu’il contient pour confirmer votre inscription. Pensez à regarder dans vos courriers indésirables.",
        "page.thanks.suggest": "Avez-vous bien écrit votre adresse ? Beaucoup d’adresses se terminent par « @{domain} ».",
        "page.invalid.title": "Adresse refusée",
        "page.back": "Retour",
        "page.confirm.title": "Confirmez votre inscription",
        "page.confirm.body": "Cliquez sur le bouton pour confirmer que vous souhaitez recevoir {site} chaque semaine.",
        "page.confirm.button": "Je confirme mon inscription",
        "page.confirmed.title": "Inscription confirmée",
        "page.confirmed.body": "C’est fait : vous recevrez {site} chaque semaine. À bientôt !",
        "page.already.title": "Inscription déjà confirmée",
        "page.already.body": "Votre inscription était déjà confirmée. Vous n’avez rien d’autre à faire.",
        "page.unsubscribe.title": "Se désabonner",
        "page.unsubscribe.body": "Vous ne recevrez plus {site}. Confirmez en cliquant sur le bouton.",
        "page.unsubscribe.button": "Me désabonner",
        "page.unsubscribed.title": "Vous êtes désabonné·e",
        "page.unsubscribed.body": "Vous ne recevrez plus {site}. Une erreur ? Vous pouvez vous réabonner en un clic.",
        "page.resubscribe.button": "Me réabonner",
        "page.resubscribed.title": "Vous êtes réabonné·e",
        "page.resubscribed.body": "Bon retour parmi nous : vous recevrez de nouveau {site} chaque semaine.",
        "page.bad_link.title": "Lien invalide",
        "page.bad_link.body": "Ce lien n’est pas valide. Copiez-le en entier depuis l’e-mail reçu, ou inscrivez-vous de nouveau.",
        "page.expired_link.title": "Lien expiré",
        "page.expired_link.body": "Ce lien a expiré. Inscrivez-vous de nouveau pour recevoir un nouveau lien de confirmation.",
        "page.stale_link.title": "Lien périmé",
        "page.stale_link.body": "Ce lien ne correspond plus à votre inscription actuelle. Utilisez le lien du dernier e-mail reçu.",
        "page.not_found.title": "Page introuvable",
        "page.not_found.body": "Cette page n’existe pas.",
        "page.subscribe_again": "S’inscrire",
        "mail.confirm.subject": "Confirmez votre inscription à {site}",
        "mail.confirm.hello": "Bonjour,",
        "mail.confirm.body": "Vous (ou quelqu’un utilisant votre adresse) avez demandé à recevoir {site}, notre lettre hebdomadaire. Pour confirmer votre inscription, cliquez sur le bouton ci-dessous.",
        "mail.confirm.button": "Confirmer mon inscription",
        "mail.confirm.expiry": "Ce lien est valable {hours} heures.",
        "mail.confirm.ignore": "Si vous n’êtes pas à l’origine de cette demande, ignorez simplement cet e-mail : vous ne recevrez rien d’autre.",
        "mail.footer.why": "Vous recevez cet e-mail parce que votre adresse a été saisie sur notre formulaire d’inscription.",
        "mail.footer.unsubscribe": "Se désabonner",
        "digest.subject": "{site} : {lead}",
        "digest.week_of": "Semaine du {date}",
        "digest.intro": "Les articles de la semaine, choisis pour vous.",
        "digest.read": "Lire l’article",
        "digest.read_line": "Lire l’article : {url}",
        "digest.unsubscribe_line": "Se désabonner en un clic :",
        "digest.online_line": "Voir la version en ligne :",
        "digest.by": "Par {author}",
        "digest.other": "Autres articles",
        "digest.online": "Voir la version en ligne",
        "digest.why": "Vous recevez cette lettre hebdomadaire parce que vous vous y êtes inscrit·e avec l’adresse {email}.",
        "digest.unsubscribe": "Se désabonner en un clic",
        "digest.web_why": "Cette lettre paraît chaque semaine. Recevez-la gratuitement par e-mail :",
        "digest.subscribe": "S’inscrire",
        "archive.title": "Les lettres précédentes",
        "archive.empty": "Aucune lettre n’a encore été envoyée.",
        "archive.articles": "{count} articles",
        "archive.article": "1 article",
    },
    "en": {
        "accepted": "Thank you! Check your inbox: we have just sent you a confirmation email.",
        "suggestion": "Did you mean {suggestion}?",
        "invalid.empty": "Please enter your email address.",
        "invalid.type": "The email address must be text.",
        "invalid.too_long": "This email address is too long.",
        "invalid.control": "The email address contains forbidden characters (line break or control character).",
        "invalid.no_at": "The email address is missing an “@”.",
        "invalid.many_at": "The email address must contain exactly one “@”.",
        "invalid.quoted": "Quoted email addresses are not accepted.",
        "invalid.ip_literal": "An IP address instead of a domain name is not accepted.",
        "invalid.local": "The part before the “@” is not valid.",
        "invalid.domain": "The domain name after the “@” is not valid.",
        "invalid.undeliverable": "This domain does not receive email.",
        "invalid.other": "This email address is not valid.",
        "bad_request": "Bad request: {detail}",
        "too_large": "Request too large.",
        "unsupported_type": "Unsupported format: send JSON or a form.",
        "page.title": "{site}",
        "page.subscribe.heading": "Join the community for free",
        "page.subscribe.lead": "and follow the news every week",
        "page.subscribe.label": "Your email address",
        "page.subscribe.button": "Subscribe",
        "page.thanks.title": "One more step",
        "page.thanks.body": "We have just sent you an email. Click the link in it to confirm your subscription. Check your spam folder too.",
        "page.thanks.suggest": "Did you spell your address right? Many addresses end in “@{domain}”.",
        "page.invalid.title": "Address refused",
        "page.back": "Back",
        "page.confirm.title": "Confirm your subscription",
        "page.confirm.body": "Click the button to confirm that you want to receive {site} every week.",
        "page.confirm.button": "Confirm my subscription",
        "page.confirmed.title": "Subscription confirmed",
        "page.confirmed.body": "Done: you will receive {site} every week. See you soon!",
        "page.already.title": "Already confirmed",
        "page.already.body": "Your subscription was already confirmed. There is nothing else to do.",
        "page.unsubscribe.title": "Unsubscribe",
        "page.unsubscribe.body": "You will no longer receive {site}. Confirm with the button.",
        "page.unsubscribe.button": "Unsubscribe me",
        "page.unsubscribed.title": "You are unsubscribed",
        "page.unsubscribed.body": "You will no longer receive {site}. A mistake? You can resubscribe in one click.",
        "page.resubscribe.button": "Resubscribe me",
        "page.resubscribed.title": "You are subscribed again",
        "page.resubscribed.body": "Welcome back: you will receive {site} every week again.",
        "page.bad_link.title": "Invalid link",
        "page.bad_link.body": "This link is not valid. Copy it whole from the email you received, or subscribe again.",
        "page.expired_link.title": "Link expired",
        "page.expired_link.body": "This link has expired. Subscribe again to get a new confirmation link.",
        "page.stale_link.title": "Outdated link",
        "page.stale_link.body": "This link no longer matches your current subscription. Use the link in the latest email you received.",
        "page.not_found.title": "Page not found",
        "page.not_found.body": "This page does not exist.",
        "page.subscribe_again": "Subscribe",
        "mail.confirm.subject": "Confirm your subscription to {site}",
        "mail.confirm.hello": "Hello,",
        "mail.confirm.body": "You (or someone using your address) asked to receive {site}, our weekly newsletter. To confirm your subscription, click the button below.",
        "mail.confirm.button": "Confirm my subscription",
        "mail.confirm.expiry": "This link is valid for {hours} hours.",
        "mail.confirm.ignore": "If you did not ask for this, simply ignore this email: you will receive nothing else.",
        "mail.footer.why": "You receive this email because your address was entered on our sign-up form.",
        "mail.footer.unsubscribe": "Unsubscribe",
        "digest.subject": "{site}: {lead}",
        "digest.week_of": "Week of {date}",
        "digest.intro": "This week’s stories, picked for you.",
        "digest.read": "Read the article",
        "digest.read_line": "Read the article: {url}",
        "digest.unsubscribe_line": "Unsubscribe in one click:",
        "digest.online_line": "View it in your browser:",
        "digest.by": "By {author}",
        "digest.other": "Other stories",
        "digest.online": "View it in your browser",
        "digest.why": "You receive this weekly newsletter because you subscribed to it with the address {email}.",
        "digest.unsubscribe": "Unsubscribe in one click",
        "digest.web_why": "This newsletter comes out every week. Get it free by email:",
        "digest.subscribe": "Subscribe",
        "archive.title": "Past issues",
        "archive.empty": "No issue has been sent yet.",
        "archive.articles": "{count} stories",
        "archive.article": "1 story",
    },
}


def translate(locale: str, key: str, **params: object) -> str:
    catalogue = MESSAGES.get(locale, MESSAGES[DEFAULT_LOCALE])
    text = catalogue.get(key) or MESSAGES[DEFAULT_LOCALE][key]
    return text.format(**params) if params else text


MONTHS = {
    "fr": [
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ],
    "en": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
}


def format_date(locale: str, day: date) -> str:
    """`23 novembre 2026`, `1er mars 2027` / `23 November 2026`."""
    months = MONTHS.get(locale, MONTHS[DEFAULT_LOCALE])
    # French writes the first of the month as an ordinal: « 1er mars ».
    number = "1er" if day.day == 1 and locale != "en" else str(day.day)
    return f"{number} {months[day.month - 1]} {day.year}"


def pick_locale(*candidates: object, accept: Iterable[str] = ()) -> str:
    """First supported locale among explicit candidates ('fr', 'en-GB', ...), then Accept-Language."""
    for candidate in (*candidates, *accept):
        if isinstance(candidate, str) and candidate:
            base = candidate.strip().lower().replace("_", "-").split("-", 1)[0]
            if base in LOCALES:
                return base
    return DEFAULT_LOCALE
